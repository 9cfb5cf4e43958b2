"""consolidate.yml on two lab hosts at once: one inventory, forks 2, both consolidated.

Two lab instances of this module's own (`mh1`, `mh2`, free ports) stand for
two servers. One run must consolidate both, write one report per host and a
summary naming both, with the hosts' tasks run side by side (the same TASK
header carries both hosts' results) rather than host after host.
"""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import labkit
import pytest

pytestmark = pytest.mark.integration

HOSTS = tuple(labkit.instance_name(name) for name in ("mh1", "mh2"))


@pytest.fixture(scope="module")
def two_labs():
    """Two lab instances in the incident state, brought up side by side."""
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        labs = dict(zip(HOSTS, pool.map(labkit.lab_up, HOSTS), strict=True))
    try:
        yield labs
    finally:
        for name in HOSTS:
            labkit.run_lab("down", "--instance", name, check=False)


def write_inventory(tmp_path, labs):
    hosts = {name: labkit.host_vars(lab.info, tmp_path / name, dbops_report_dir=str(tmp_path / "reports"))
             for name, lab in labs.items()}
    return labkit.write_inventory(tmp_path / "inventory.json", hosts)


def task_blocks(output):
    """{task header: text of its results}, for every TASK header in the output."""
    parts = re.split(r"^TASK \[(.*?)\] \*+$", output, flags=re.M)
    blocks = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        body = re.split(r"^PLAY ", body, flags=re.M)[0]
        blocks.setdefault(name, []).append(body)
    return blocks


def test_two_hosts_consolidated_in_one_parallel_run(two_labs, tmp_path):
    proc = labkit.run_playbook(labkit.REPO / "playbooks" / "consolidate.yml",
                               write_inventory(tmp_path, two_labs), "--forks", "2")
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    for name in HOSTS:
        recap = rf"^{name}\s+: ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0"
        assert re.search(recap, out, re.M), name

    # Both servers end on qadhya, every row there, app healthy on it.
    for name, lab in two_labs.items():
        status = lab.status()
        assert sorted(status["databases"]) == ["postgres", "qadhya", "template0", "template1"], name
        counts = status["databases"]["qadhya"]
        assert (counts["knowledge_base"], counts["users"], counts["web_sources"],
                counts["user_validation_stats"]) == (580, 2, 6, 2), name
        assert status["env_db_name"] == "qadhya", name
        code, body = lab.health()
        assert code == 200 and body["database"] == "qadhya" and body["documents"] == 580, name
        password = lab.info["db_password"]
        assert password not in out and password not in proc.stderr

    # One report per host, each a success on its own backup.
    reports = {p.name.split("-")[0]: json.loads(p.read_text()) for p in (tmp_path / "reports").glob("*.json")}
    assert sorted(reports) == list(HOSTS)
    for name, report in reports.items():
        assert report["result"] == "success", name
        assert report["counts_after"] == report["counts_before"], name
        assert report["backup"]["path"].startswith(str(tmp_path / name)), name

    # The summary, printed once, names both hosts.
    summary = out[out.rindex("TASK [Report | Summary]"):]
    for name in HOSTS:
        assert re.search(rf"{name}: SUCCESS\s+moncabinet -> qadhya", summary), summary

    # Side by side, not host after host: each phase's play runs once for both
    # hosts (no serial batches) and the per-host work of both hosts shows
    # under the same TASK headers.
    for phase in ("(1/4)", "(2/4)", "(3/4)", "(4/4)"):
        assert out.count(f"PLAY [{phase}") == 1, phase
    blocks = task_blocks(out)
    key = r"Backup \| Run create|Switch \| Stop the app, rename the database"
    key_tasks = [name for name in blocks if re.search(key, name)]
    assert len(key_tasks) >= 2, sorted(blocks)
    for name in key_tasks:
        for body in blocks[name]:
            hosts_seen = set(re.findall(r"^(?:ok|changed): \[([^\]\s]+)\]", body, re.M))
            assert hosts_seen == set(HOSTS), (name, body)


def test_in_batches_a_rolled_back_host_holds_the_next(two_labs, tmp_path):
    """serial 1 (the production default): the first host fails after its
    rename and is rolled back; the second host's app is never stopped."""
    first, second = (two_labs[name] for name in HOSTS)
    for lab in (first, second):
        lab.reset()
    with first.env_file.open("a", encoding="utf-8") as fh:
        fh.write("LAB_FAIL_ON_DB=qadhya\n")
    second_app = json.loads(labkit.docker("inspect", second.app).stdout)[0]

    proc = labkit.run_playbook(labkit.REPO / "playbooks" / "consolidate.yml",
                               write_inventory(tmp_path, two_labs),
                               "-e", "dbops_serial=1", "-e", "dbops_health_timeout=8")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert out.count("PLAY [(3/4)") == 2, "the switch play should run in two batches"

    reports = {p.name.split("-")[0]: json.loads(p.read_text()) for p in (tmp_path / "reports").glob("*.json")}
    assert reports[HOSTS[0]]["result"] == "rolled_back"
    assert reports[HOSTS[1]]["result"] == "failed"
    assert "held" in reports[HOSTS[1]]["message"]

    # The held host kept its data under the old name, its app repointed at
    # it (before any switch) and never stopped by the switch.
    status = second.status()
    assert "moncabinet" in status["databases"] and status["databases"]["moncabinet"]["knowledge_base"] == 580
    code, body = second.health()
    assert code == 200 and body["database"] == "moncabinet"
    after = json.loads(labkit.docker("inspect", second.app).stdout)[0]
    assert after["Id"] == second_app["Id"]
    # The rolled-back host is healthy on its old name with every row.
    code, body = first.health()
    assert code == 200 and body["database"] == "moncabinet" and body["documents"] == 580
