"""Crashes outside the switch window, on a real lab instance of this module's own.

`ansible-playbook` (its whole process group) is SIGKILLed while pg_dump
writes the backup taken before the switch (a generated table makes the dump
last a few seconds), and as the verification after the switch starts. The
next run takes over the dead run's lock and undoes its journal first; the
partial dump the killed run left is removed, never judged as a backup;
rollback.yml puts everything back, a rerun of consolidate.yml converges.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import (
    DatabaseWatcher,
    JournalWatcher,
    PathWatcher,
    blocked_databases,
    kill_tree,
    repointed_case,
    snapshot,
)
from labkit import REPO, docker, host_vars, instance_name, run_module, run_playbook, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fcrash")
SOURCE, TARGET = "moncabinet", "qadhya"
CONSOLIDATE = REPO / "playbooks" / "consolidate.yml"
ROLLBACK = REPO / "playbooks" / "rollback.yml"
PARTIAL = ".%s-*.partial-*" % SOURCE


@pytest.fixture
def case(module_lab, tmp_path):
    """The incident state, the app repointed at its data first, an inventory."""
    return repointed_case(module_lab, tmp_path, SOURCE, dbops_health_timeout=15)


def crash(case, make_watcher, whole_tree=False):
    """consolidate.yml, SIGKILLed when the watcher strikes: its process group (the
    modules it started go on, as after an operator's kill), or with `whole_tree`
    every process below it too (a power cut: the module dies halfway)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), str(CONSOLIDATE), "-i",
                             str(case["inventory"])], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    watcher = make_watcher((lambda: kill_tree(proc.pid)) if whole_tree
                           else (lambda: os.killpg(proc.pid, signal.SIGKILL)))
    try:
        assert proc.wait(timeout=600) == -signal.SIGKILL, "the run ended before the strike"
    finally:
        watcher.close()
    assert watcher.fired.is_set() and watcher.error is None, watcher.error
    assert (case["backups"] / "journal" / "run.lock").exists()
    time.sleep(1)  # reports are named by the second they start in
    return watcher


def run(case, playbook):
    before = set((case["work"] / "reports").glob("lab1-*.json"))
    proc = run_playbook(playbook, case["inventory"])
    reports = sorted(set((case["work"] / "reports").glob("lab1-*.json")) - before)
    assert reports, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads(reports[-1].read_text())


def databases(inst):
    rows = inst.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate")
    return sorted(row[0] for row in rows)


def assert_no_stray_state(case):
    inst = case["inst"]
    backups = case["backups"]
    assert not list(backups.glob(".*")), list(backups.glob(".*"))  # no partial, no temporary file
    dumps = sorted(p.name for p in backups.glob("*.dump"))
    assert dumps == sorted(p.name[:-len(".manifest.json")] for p in backups.glob("*.manifest.json")), dumps
    assert blocked_databases(inst) == []
    assert docker("inspect", inst.app + ".dbops-previous", check=False).returncode != 0
    assert not (backups / "journal" / "run.lock").exists()


def add_bulk(inst):
    # About 30 MB of rows no compression folds away: the dump takes a few seconds.
    inst.psql(SOURCE, "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) || "
                      "md5((g + 2)::text) || md5((g + 3)::text) || md5((g + 4)::text) AS pad "
                      "FROM generate_series(1, 200000) g")


def rerun_converges(case, rows_before):
    """consolidate.yml after the crash: it takes the dead run's lock over, undoes its journal,
    then consolidates, the app healthy on the target holding every row, nothing stray left."""
    inst = case["inst"]
    proc, report = run(case, CONSOLIDATE)
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    assert "was interrupted" in report.get("recovered", ""), report
    status, body = inst.health()
    assert status == 200 and body["database"] == TARGET, (status, body)
    assert snapshot(inst, TARGET) == rows_before
    assert databases(inst) == ["postgres", TARGET]
    assert_no_stray_state(case)


def test_a_crash_during_the_dump_then_rollback_yml_puts_it_back(case):
    inst = case["inst"]
    add_bulk(inst)
    env_before, rows_before, names = inst.env_file.read_bytes(), snapshot(inst, SOURCE), databases(inst)
    watcher = crash(case, lambda kill: PathWatcher(case["backups"], PARTIAL, kill, min_bytes=1 << 20))
    assert watcher.seen and all(path.exists() for path in watcher.seen), "no partial dump left to find"

    proc, report = run(case, ROLLBACK)
    assert proc.returncode == 0 and report["result"] == "rolled_back", report["message"]
    assert "was interrupted; nothing to undo" in report["message"], report["message"]
    assert not any(path.exists() for path in watcher.seen)
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    assert inst.env_file.read_bytes() == env_before and databases(inst) == names
    assert snapshot(inst, SOURCE) == rows_before
    assert_no_stray_state(case)


def test_a_crash_as_the_verification_starts_then_a_rerun_converges(case):
    inst = case["inst"]
    rows_before = snapshot(inst, SOURCE)
    # The second window entry closes the window; the verification follows it.
    crash(case, lambda kill: JournalWatcher(case["backups"] / "journal", "window", kill, occurrence=2))
    rerun_converges(case, rows_before)


def test_a_crash_during_the_dump_then_a_rerun_converges(case):
    # The whole tree dies (the module and its pg_dump client too): the partial dump is
    # nobody's any more, and the rerun must neither trip over it nor keep it.
    inst = case["inst"]
    add_bulk(inst)
    rows_before = snapshot(inst, SOURCE)
    watcher = crash(case, lambda kill: PathWatcher(case["backups"], PARTIAL, kill, min_bytes=1 << 20),
                    whole_tree=True)
    assert watcher.seen and all(path.exists() for path in watcher.seen), "no partial dump left to find"
    rerun_converges(case, rows_before)
    assert not any(path.exists() for path in watcher.seen)


def test_a_crash_as_the_verification_starts_then_rollback_yml_puts_it_back(case):
    inst = case["inst"]
    env_before, rows_before, names = inst.env_file.read_bytes(), snapshot(inst, SOURCE), databases(inst)
    target_before = snapshot(inst, TARGET)
    crash(case, lambda kill: JournalWatcher(case["backups"] / "journal", "window", kill, occurrence=2))
    proc, report = run(case, ROLLBACK)
    assert proc.returncode == 0 and report["result"] == "rolled_back", report["message"]
    assert "was interrupted" in report["message"], report["message"]
    status, body = inst.health()
    assert status == 200 and body["database"] == SOURCE, (status, body)
    assert inst.env_file.read_bytes() == env_before and databases(inst) == names
    assert snapshot(inst, SOURCE) == rows_before
    assert snapshot(inst, TARGET) == target_before  # the emptied target restored from its backup
    assert_no_stray_state(case)


@pytest.mark.parametrize("then", ["consolidate", "rollback"])
def test_a_restore_check_killed_halfway_leaves_no_scratch_database(module_lab, tmp_path, then):
    # The verification by restore dies with its process (a power cut): its scratch
    # database stays, empty, marked with a pid that no longer exists. The rerun's backup
    # drops it (nobody is connected, its process is gone) before taking its own; a
    # rollback.yml instead drops it as it takes the dead run over.
    case = repointed_case(module_lab, tmp_path, SOURCE, dbops_health_timeout=15,
                          dbops_backup_verify="restore")
    inst = case["inst"]
    rows_before = snapshot(inst, SOURCE)
    # The strike lands as soon as the scratch database is marked, early in its restore.
    watcher = crash(case, lambda kill: DatabaseWatcher(inst, "dbops\\_verify\\_%", kill), whole_tree=True)
    left = [row[0] for row in inst.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE "
                                                    "'dbops\\_verify\\_%'")]
    assert left and left == watcher.seen, (left, watcher.seen)  # the orphan the crash left
    # What the recovery after a crash would drop, asked in check mode: that one only, still there.
    result, _out = run_module("db_backup", inst.login_args(action="clean"), check=True)
    assert not result["failed"] and result["scratch_orphans_dropped"] == left, result
    assert [n for n in databases(inst) if n.startswith("dbops_verify_")] == left
    if then == "rollback":
        proc, report = run(case, ROLLBACK)
        assert proc.returncode == 0 and report["result"] == "rolled_back", report["message"]
        assert "was interrupted; nothing to undo" in report["message"], report["message"]
        status, body = inst.health()
        assert status == 200 and body["database"] == SOURCE, (status, body)
        assert snapshot(inst, SOURCE) == rows_before
        assert databases(inst) == [SOURCE, "postgres", TARGET]  # no scratch database left
        assert_no_stray_state(case)
    else:
        rerun_converges(case, rows_before)  # only postgres and the target: no scratch database left


def test_a_crash_during_the_repoint_then_a_rerun_converges(module_lab, tmp_path):
    # From the incident itself (the app configured for the empty qadhya): killed
    # once the repoint's env write is journalled, as the app restarts on its data.
    # The rerun undoes the dead run (the env file back, the app as it was), then
    # repoints and consolidates from the start.
    inst = module_lab
    inst.reset("--mode", "mounted")
    (tmp_path / "migrations").mkdir()
    hosts = {"lab1": host_vars(inst.info, tmp_path, dbops_migrations_dir=str(tmp_path / "migrations"),
                               dbops_health_timeout=15)}
    case = dict(inst=inst, work=tmp_path, backups=tmp_path / "backups",
                inventory=write_inventory(tmp_path / "inventory.json", hosts))
    rows_before = snapshot(inst, SOURCE)
    crash(case, lambda kill: JournalWatcher(case["backups"] / "journal", "env_write", kill))
    rerun_converges(case, rows_before)
