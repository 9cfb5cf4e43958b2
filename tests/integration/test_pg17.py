"""The part of the integration suite that depends on the server version, on PostgreSQL 17.

The other test files run on the lab's default PostgreSQL 15. Here one
instance (`lab.py up --pg 17`, Debian 13's postgresql-17) goes through what
changes with the server: a full consolidation whose backup is verified by
restore (into a scratch database) and its idempotent rerun,
`playbooks/restore.yml` of that backup, and `db_migrate` on the restored
copy. Dumps are made and restored inside the database container, so pg_dump
and pg_restore are the server's own version 17.
"""

import json
import re
from pathlib import Path

import labkit
import pytest
from test_consolidate import count, databases, latest_report, recap, run_playbook, write_inventory
from test_db_migrate import INCIDENT, ScratchLab, migrate

pytestmark = pytest.mark.integration

INSTANCE = labkit.instance_name("pg17")
RESTORED = "pg17_restored"


@pytest.fixture(scope="module")
def lab17():
    inst = labkit.lab_up(INSTANCE, "--pg", "17")
    yield inst
    labkit.run_lab("down", "--instance", INSTANCE, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pg17")


def inventory(work, lab):
    # A generous health wait: the server's version is under test here, not the machine's load.
    return write_inventory(work, lab, dbops_backup_verify="restore", dbops_health_timeout=180)


@pytest.fixture(scope="module")
def consolidated(lab17, work):
    """consolidate.yml once on the incident, backup verified by restore; (its output, its report)."""
    proc = run_playbook(inventory(work, lab17))
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc, latest_report(work)


def test_instance_runs_postgresql_17_with_its_own_client_tools(lab17):
    assert lab17.info["pg_version"] == "17" and lab17.info["pg_image"] == "qadhya-lab/postgres:17"
    assert lab17.psql("postgres", "SHOW server_version_num")[0][0].startswith("17")
    tools = labkit.docker("exec", lab17.db, "pg_dump", "--version").stdout
    assert re.match(r"pg_dump \(PostgreSQL\) 17\.", tools), tools
    # The same incident as on 15: data in moncabinet, an empty qadhya named by the env file.
    assert count(lab17, "moncabinet", "knowledge_base") == 580
    assert count(lab17, "qadhya", "knowledge_base") == 0
    assert re.search(r"^DB_NAME=qadhya$", lab17.env_file.read_text(), re.M)


def test_consolidates_then_is_idempotent(lab17, work, consolidated):
    proc, report = consolidated
    assert databases(lab17) == ["postgres", "qadhya", "template0", "template1"]
    assert [count(lab17, "qadhya", t) for t in ("knowledge_base", "users", "web_sources",
                                                "user_validation_stats")] == [580, 2, 6, 2]
    assert lab17.psql("qadhya", "SELECT name FROM _migrations") == [[INCIDENT]]
    status, body = lab17.health()
    assert status == 200 and body["database"] == "qadhya" and body["documents"] == 580
    assert report["result"] == "success" and report["counts_after"] == report["counts_before"]
    manifest = json.loads(Path(report["backup"]["path"] + ".manifest.json").read_text())
    assert manifest["verified"]["level"] == "restore" and manifest["verified"]["ok"] is True, manifest
    assert manifest["server_version"].startswith("17") and "17." in manifest["pg_dump_version"], manifest
    # The scratch database of the restore check is gone.
    assert not lab17.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'dbops_verify_%'")
    assert lab17.info["db_password"] not in proc.stdout

    again = run_playbook(inventory(work, lab17))
    assert again.returncode == 0, again.stdout[-4000:]
    assert recap(again.stdout)["changed"] == 0, again.stdout[-4000:]
    assert latest_report(work)["result"] == "unchanged"


def test_restore_playbook_into_new_database_then_unchanged(lab17, work, consolidated):
    backup = consolidated[1]["backup"]
    hosts = work / "inventory.json"
    args = ("-e", "dbops_restore_path=" + backup["path"], "-e", "dbops_restore_target=" + RESTORED)
    proc = labkit.run_playbook(labkit.REPO / "playbooks" / "restore.yml", hosts, *args)
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = json.loads((work / "reports" / "restore" / "lab-it-latest.json").read_text())
    assert result["result"] == "success" and result["target"] == RESTORED
    manifest = json.loads(Path(backup["path"] + ".manifest.json").read_text())
    assert result["counts_after"] == result["counts_manifest"] == manifest["row_counts"]
    assert [count(lab17, RESTORED, t) for t in ("knowledge_base", "users", "web_sources")] == [580, 2, 6]
    assert lab17.psql(RESTORED, "SELECT md5(string_agg(content, '' ORDER BY id)) FROM knowledge_base") == \
        lab17.psql("qadhya", "SELECT md5(string_agg(content, '' ORDER BY id)) FROM knowledge_base")

    again = labkit.run_playbook(labkit.REPO / "playbooks" / "restore.yml", hosts, *args)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout)["changed"] == 0


def test_db_migrate_on_the_restored_copy(lab17, tmp_path):
    # The backup was taken before the migration: the restored copy has it pending.
    copy = ScratchLab(lab17, RESTORED)
    args = dict(migrations_dir=str(labkit.REPO / "migrations"))
    planned = migrate(copy, tmp_path, check=True, **args)
    assert planned["changed"] is True and "failed" not in planned, planned.get("msg")
    assert planned["pending"] == [INCIDENT]
    assert lab17.psql(RESTORED, "SELECT to_regclass('user_validation_stats') IS NULL") == [["t"]]

    applied = migrate(copy, tmp_path, **args)
    assert applied["changed"] is True and "failed" not in applied, applied.get("msg")
    assert [a["name"] for a in applied["applied"]] == [INCIDENT]
    assert count(lab17, RESTORED, "user_validation_stats") == 2

    again = migrate(copy, tmp_path, **args)
    assert again["changed"] is False and again["applied"] == [] and again["pending"] == []
