"""consolidate.yml end to end on a real lab instance, driven by ansible-playbook.

Sequence per STYLE: check mode changes nothing -> real run -> real state
asserted -> rerun is changed=0 -> faults roll back.
"""

import json
import re
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"


def write_inventory(tmp_path, lab, **extra):
    return labkit.write_inventory(tmp_path / "inventory.json",
                                  {"lab-it": labkit.host_vars(lab.info, tmp_path, **extra)})


def run_playbook(inventory, *args):
    return labkit.run_playbook(PLAYBOOK, inventory, *args)


def recap(output):
    match = re.search(r"lab-it\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert match, output[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True))


def latest_report(tmp_path):
    reports = sorted((tmp_path / "reports").glob("lab-it-*.json"), key=lambda p: p.stat().st_mtime)
    assert reports, "no JSON report written"
    return json.loads(reports[-1].read_text())


def databases(lab):
    return sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database"))


def count(lab, db, table):
    return int(lab.psql(db, f"SELECT count(*) FROM {table}")[0][0])


def test_check_mode_changes_nothing_and_shows_plan(incident_lab, tmp_path):
    lab = incident_lab
    inv = write_inventory(tmp_path, lab)
    env_before = lab.env_file.read_bytes()
    proc = run_playbook(inv, "--check", "--diff")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert "plan: pending" in out
    assert "-DB_NAME=qadhya" in out and "+DB_NAME=moncabinet" in out
    password = re.search(rb"^DB_PASSWORD=(.*)$", env_before, re.M).group(1).decode()
    assert password not in out
    assert lab.env_file.read_bytes() == env_before
    assert databases(lab) == ["moncabinet", "postgres", "qadhya", "template0", "template1"]
    assert not list((tmp_path / "backups").glob("*")) if (tmp_path / "backups").exists() else True
    assert lab.psql("moncabinet", "SELECT to_regclass('user_validation_stats') IS NULL") == [["t"]]


def test_consolidates_then_is_idempotent(incident_lab, tmp_path):
    lab = incident_lab
    inv = write_inventory(tmp_path, lab)
    proc = run_playbook(inv)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert databases(lab) == ["postgres", "qadhya", "template0", "template1"]
    assert [count(lab, "qadhya", t) for t in ("knowledge_base", "users", "web_sources",
                                              "user_validation_stats")] == [580, 2, 6, 2]
    assert lab.psql("qadhya", "SELECT name FROM _migrations") == [["20260213_kb_validation_gamification.sql"]]
    assert re.search(r"^DB_NAME=qadhya$", lab.env_file.read_text(), re.M)
    assert oct(lab.env_file.stat().st_mode & 0o777) == "0o600"
    backups = [p for p in lab.env_file.parent.iterdir()
               if p.name.startswith(".env.") and p.name.endswith("~")]
    assert backups, "no timestamped env backup beside the env file"
    status, body = lab.health()
    assert status == 200 and body["database"] == "qadhya" and body["documents"] == 580
    report = latest_report(tmp_path)
    assert report["result"] == "success"
    assert report["source"] == "moncabinet" and report["target"] == "qadhya"
    assert report["counts_after"]["knowledge_base"] == 580
    assert report["counts_after"] == report["counts_before"]
    assert report["backup"]["verified"]["ok"] is True
    dump = Path(report["backup"]["path"])
    assert dump.exists() and oct(dump.stat().st_mode & 0o777) == "0o600"
    assert report["migrations_applied"] == ["20260213_kb_validation_gamification.sql"]
    assert 0 < report["downtime_s"] < 30
    # The window is one task; its journal holds the steps in order, the proof and the timings.
    assert proc.stdout.count("TASK [Switch | Stop the app, rename the database") == 1
    entries = json.loads(sorted((tmp_path / "backups" / "journal").glob("*.json"))[-1].read_text())["entries"]
    steps = [e["step"] for e in entries]
    window = steps[steps.index("window"):len(steps) - steps[::-1].index("window")]
    assert window == ["window", "app_stop", "db_block", "db_drop", "db_rename", "env_write", "app_start",
                      "window"], steps
    closing = [e for e in entries if e["step"] == "window"][-1]
    assert closing["edge"] == "close"
    assert {"stop", "rename", "env_write", "serving"} <= set(closing["timings"])
    verify = [e for e in entries if e["step"] == "verify"][-1]
    assert verify["checksums_before"] == verify["checksums_after"]
    assert verify["checksums_before"]["knowledge_base"].startswith("580:")
    assert isinstance(verify["oid"], int)
    password = re.search(r"^DB_PASSWORD=(.*)$", lab.env_file.read_text(), re.M).group(1)
    assert password not in proc.stdout
    assert password not in json.dumps(report)

    again = run_playbook(inv)
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again.stdout)["changed"] == 0, again.stdout[-4000:]
    assert latest_report(tmp_path)["result"] == "unchanged"


def test_created_mode_is_recreated_with_same_config(lab_instance, tmp_path):
    lab = lab_instance
    lab.reset("--mode", "created")
    try:
        before = json.loads(lab.docker("inspect", lab.app).stdout)[0]
        proc = run_playbook(write_inventory(tmp_path, lab))
        assert proc.returncode == 0, proc.stdout[-6000:]
        status, body = lab.health()
        assert status == 200 and body["database"] == "qadhya"
        after = json.loads(lab.docker("inspect", lab.app).stdout)[0]
        assert after["Id"] != before["Id"], "env at creation needs a new container"
        for key in ("Image", "Cmd", "Entrypoint", "Labels", "Healthcheck", "ExposedPorts"):
            assert after["Config"].get(key) == before["Config"].get(key), key
        for key in ("PortBindings", "RestartPolicy", "Binds", "NetworkMode"):
            assert after["HostConfig"].get(key) == before["HostConfig"].get(key), key
        assert sorted(after["NetworkSettings"]["Networks"]) == sorted(before["NetworkSettings"]["Networks"])
        env_after = dict(e.split("=", 1) for e in after["Config"]["Env"])
        env_before = dict(e.split("=", 1) for e in before["Config"]["Env"])
        assert env_after.pop("DB_NAME") == "qadhya"
        env_before.pop("DB_NAME")
        assert env_after == env_before
    finally:
        lab.reset("--mode", "mounted")


def test_unsafe_target_with_data_is_refused(incident_lab, tmp_path):
    lab = incident_lab
    lab.psql("qadhya", "INSERT INTO knowledge_base (title, category, language, content) "
                       "VALUES ('x', 'x', 'fr', 'x')")
    env_before = lab.env_file.read_bytes()
    proc = run_playbook(write_inventory(tmp_path, lab))
    assert proc.returncode != 0
    assert "several databases hold data" in proc.stdout or "already holds data" in proc.stdout
    assert lab.env_file.read_bytes() == env_before
    assert databases(lab) == ["moncabinet", "postgres", "qadhya", "template0", "template1"]
    assert count(lab, "moncabinet", "knowledge_base") == 580
    assert latest_report(tmp_path)["result"] == "failed"


def test_failure_after_rename_rolls_back(incident_lab, tmp_path):
    """The app cannot become healthy on the new name: everything goes back."""
    lab = incident_lab
    with lab.env_file.open("a", encoding="utf-8") as fh:
        fh.write("LAB_FAIL_ON_DB=qadhya\n")
    inv = write_inventory(tmp_path, lab, dbops_health_timeout=8)
    proc = run_playbook(inv)
    out = proc.stdout
    assert proc.returncode != 0, out[-4000:]
    assert "rolled_back:" in out and "rolled back" in out
    # The empty target dropped before the rename is restored from its backup.
    assert databases(lab) == ["moncabinet", "postgres", "qadhya", "template0", "template1"]
    assert count(lab, "qadhya", "knowledge_base") == 0
    assert count(lab, "moncabinet", "knowledge_base") == 580
    assert count(lab, "moncabinet", "user_validation_stats") == 2
    env = lab.env_file.read_text()
    assert re.search(r"^DB_NAME=moncabinet$", env, re.M), env
    assert "LAB_FAIL_ON_DB=qadhya" in env
    status, body = lab.health()
    assert status == 200 and body["database"] == "moncabinet" and body["documents"] == 580
    report = latest_report(tmp_path)
    assert report["result"] == "rolled_back"
    assert "Start the app" in report["message"]
