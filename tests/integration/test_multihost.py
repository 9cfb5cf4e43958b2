"""consolidate.yml on two lab hosts at once: one inventory, forks 2, both consolidated.

Two lab instances of this module's own (`mh1`, `mh2`, free ports) stand for
two servers. One run must consolidate both, write one report per host and a
summary naming both, with the hosts' tasks run side by side (the same TASK
header carries both hosts' results) rather than host after host.
"""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAB_PY = REPO / "lab" / "lab.py"
HOSTS = ("mh1", "mh2")


def lab(*args, check=True):
    proc = subprocess.run([sys.executable, str(LAB_PY), *map(str, args)], capture_output=True,
                          text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"lab.py {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def two_labs():
    """Two lab instances in the incident state, brought up side by side."""
    procs = [subprocess.Popen([sys.executable, str(LAB_PY), "up", "--instance", name,
                               "--port", str(free_port())],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in HOSTS]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
        yield {name: json.loads(lab("env", "--instance", name).stdout) for name in HOSTS}
    finally:
        for name in HOSTS:
            lab("down", "--instance", name, check=False)


def write_inventory(tmp_path, labs):
    hosts = {
        name: {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "dbops_env_file": info["env_file"],
            "dbops_db_container": info["db_container"],
            "dbops_app_container": info["app_container"],
            "dbops_target_db": "qadhya",
            "dbops_health_url": info["health_url"],
            "dbops_backup_dir": str(tmp_path / name / "backups"),
            "dbops_migrations_dir": str(REPO / "migrations"),
            "dbops_report_dir": str(tmp_path / "reports"),
        }
        for name, info in labs.items()
    }
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps({"all": {"children": {"lab": {"hosts": hosts}}}}))
    return inv


def task_blocks(output):
    """{task header: text of its results}, for every TASK header in the output."""
    parts = re.split(r"^TASK \[(.*?)\] \*+$", output, flags=re.M)
    blocks = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        body = re.split(r"^PLAY ", body, flags=re.M)[0]
        blocks.setdefault(name, []).append(body)
    return blocks


def test_two_hosts_consolidated_in_one_parallel_run(two_labs, tmp_path):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(REPO / "playbooks" / "consolidate.yml"),
         "-i", str(write_inventory(tmp_path, two_labs)), "--forks", "2"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    for name in HOSTS:
        recap = rf"^{name}\s+: ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0"
        assert re.search(recap, out, re.M), name

    # Both servers end on qadhya, every row there, app healthy on it.
    for name, info in two_labs.items():
        status = json.loads(lab("status", "--instance", name, "--json").stdout)
        assert sorted(status["databases"]) == ["postgres", "qadhya", "template0", "template1"], name
        counts = status["databases"]["qadhya"]
        assert (counts["knowledge_base"], counts["users"], counts["web_sources"],
                counts["user_validation_stats"]) == (580, 2, 6, 2), name
        assert status["env_db_name"] == "qadhya", name
        code, body = health(info["health_url"])
        assert code == 200 and body["database"] == "qadhya" and body["documents"] == 580, name
        assert info["db_password"] not in out and info["db_password"] not in proc.stderr

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
        assert re.search(rf"- {name}\s+success\s+moncabinet -> qadhya", summary), summary

    # Side by side, not host after host: each phase's play runs once for both
    # hosts (no serial batches) and the per-host work of both hosts shows
    # under the same TASK headers.
    for phase in ("(1/4)", "(2/4)", "(3/4)", "(4/4)"):
        assert out.count(f"PLAY [{phase}") == 1, phase
    blocks = task_blocks(out)
    key = r"Backup \| Run create|Rename \| Rename the database|Start \| Start the app"
    key_tasks = [name for name in blocks if re.search(key, name)]
    assert len(key_tasks) >= 3, sorted(blocks)
    for name in key_tasks:
        for body in blocks[name]:
            hosts_seen = set(re.findall(r"^(?:ok|changed): \[(mh\d)", body, re.M))
            assert hosts_seen == set(HOSTS), (name, body)
