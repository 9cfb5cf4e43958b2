"""Which backup check.yml and restore.yml rely on, on a real lab instance (issue 8, item 4).

Right after a consolidation, the backup directory holds the source's dump
(taken for the target name) and the dump of the empty target taken just
before its drop, seconds newer. The daily check must judge the first, and
a backup that holds far fewer rows than the live database is red; restore
refuses a 0-row backup of a database holding rows unless told.
"""

import json
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"


@pytest.fixture(scope="module")
def lab(lab_instance):
    lab_instance.reset("--mode", "mounted")
    yield lab_instance
    lab_instance.reset("--mode", "mounted")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("backup_choice")


@pytest.fixture(scope="module")
def inventory(lab, work):
    return labkit.write_inventory(work / "inventory.json", {"lab-it": labkit.host_vars(lab.info, work)})


@pytest.fixture(scope="module")
def consolidated(lab, inventory, work):
    """The lab consolidated into `qadhya` by the playbook, as a user runs it."""
    proc = labkit.run_playbook(PLAYBOOKS / "consolidate.yml", inventory)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return live_rows(lab, "qadhya")


def live_rows(lab, db):
    tables = lab.psql(db, "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables")
    return sum(int(lab.psql(db, "SELECT count(*) FROM %s" % t[0])[0][0]) for t in tables)


def report(work, kind):
    return json.loads((work / "reports" / kind / "lab-it-latest.json").read_text())


def manifests(work):
    return {p.name: json.loads(p.read_text()) for p in (work / "backups").glob("*.manifest.json")}


def test_check_right_after_a_consolidation_judges_the_source_backup(lab, inventory, work, consolidated):
    assert consolidated > 0
    dropped = [m for m in manifests(work).values() if m["database"] == "qadhya"]
    proc = labkit.run_playbook(PLAYBOOKS / "check.yml", inventory)
    result = report(work, "check")
    backup = {c["check"]: c for c in result["checks"]}["backup"]
    newest = result["newest_backup"]
    # Whatever the consolidation recorded, a backup holding far fewer rows
    # than the live database never makes the check green.
    assert backup["status"] == "critical" or newest["total_rows"] >= consolidated * 0.5, backup
    # The contract (needs consolidate.yml to pass for_database/purpose): the
    # source's dump is the newest backup of `qadhya`, the emptied target's never.
    assert all(m.get("purpose") == "dropped_empty_target" for m in dropped), \
        "consolidate.yml must back up the emptied target with purpose dropped_empty_target: %s" % dropped
    assert newest["database"] == "moncabinet" and newest["for_database"] == "qadhya", newest
    # Taken before the pending migration added its rows.
    taken = sum(manifests(work)[Path(newest["path"]).name + ".manifest.json"]["row_counts"].values())
    assert newest["purpose"] == "pre_consolidation" and newest["total_rows"] == taken > consolidated * 0.5
    assert backup["status"] == "ok", backup
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.fixture(scope="module")
def empty_backup(lab, consolidated, work):
    """The newest verified backup of `qadhya` is the dump of an empty database (0 rows)."""
    lab.psql("postgres", "DROP DATABASE IF EXISTS dbops_it_empty")
    lab.psql("postgres", "CREATE DATABASE dbops_it_empty")
    result, _out = labkit.run_module("db_backup", lab.login_args(
        database="dbops_it_empty", for_database="qadhya", dest_dir=str(work / "backups")))
    assert not result["failed"], result.get("msg")
    yield result
    lab.psql("postgres", "DROP DATABASE IF EXISTS dbops_it_empty")


def test_check_is_red_when_the_newest_backup_holds_far_fewer_rows(inventory, work, consolidated,
                                                                  empty_backup):
    proc = labkit.run_playbook(PLAYBOOKS / "check.yml", inventory)
    assert proc.returncode != 0, "critical must exit non-zero: " + proc.stdout[-3000:]
    result = report(work, "check")
    backup = {c["check"]: c for c in result["checks"]}["backup"]
    assert backup["status"] == "critical", backup
    assert Path(empty_backup["path"]).name in backup["detail"]
    assert "holds 0 rows but qadhya holds %d" % consolidated in backup["detail"]
    assert "run backup.yml" in backup["detail"]


def test_restore_refuses_a_zero_row_backup_of_a_database_holding_rows(lab, inventory, work, consolidated,
                                                                      empty_backup):
    before = sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database"))
    proc = labkit.run_playbook(PLAYBOOKS / "restore.yml", inventory)
    assert proc.returncode != 0, proc.stdout[-3000:]
    result = report(work, "restore")
    assert result["result"] == "failed"
    message = result["message"]
    assert "\n" not in message
    assert Path(empty_backup["path"]).name in message and "holds 0 rows but qadhya holds %d" % consolidated \
        in message
    assert "dbops_restore_allow_empty=true" in message and "dbops_restore_path" in message
    assert sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database")) == before

    # A chosen file is checked the same way.
    chosen = labkit.run_playbook(PLAYBOOKS / "restore.yml", inventory, "-e",
                                 "dbops_restore_path=" + empty_backup["path"])
    assert chosen.returncode != 0 and "holds 0 rows" in report(work, "restore")["message"]

    target = "dbops_it_empty_restored"
    extra = ["-e", "dbops_restore_allow_empty=true", "-e", "dbops_restore_target=%s" % target]
    allowed = labkit.run_playbook(PLAYBOOKS / "restore.yml", inventory, *extra)
    try:
        assert allowed.returncode == 0, allowed.stdout[-3000:]
        assert report(work, "restore")["result"] == "success"
    finally:
        lab.psql("postgres", "DROP DATABASE IF EXISTS %s" % target)
