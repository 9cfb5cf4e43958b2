"""A real failure at every step of the switch, and the rollback from the journal.

Each test breaks one step of consolidate.yml for real on a lab instance (the
Docker Engine refusing a call, a prepared transaction pinning a database, a
read-only env file, an app that will not be healthy), then asserts the end
state: the app healthy on the database holding the data, the env file
byte-identical to before the switch, every table's rows and content checksum
equal, no database left refusing connections, and a `rolled_back` result
whose one line names the step that failed.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from faultkit import DockerFaultProxy, JournalWatcher, blocked_databases, descendants, snapshot
from labkit import docker, host_vars, instance_name, run_lab, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
INSTANCE = instance_name(os.environ.get("QADHYA_FAULT_INSTANCE", "itfault"))
SOURCE = "moncabinet"


@pytest.fixture
def case(module_lab, tmp_path):
    """The instance reset to the incident state, with an inventory in tmp_path."""
    lab = module_lab
    lab.reset("--mode", "mounted")
    wait_for(lambda: lab.health()[0] is not None, timeout=30)
    # No migrations: they are kept by a rollback (tested in test_db_migrate), and
    # without them every table must come out exactly as it went in.
    (tmp_path / "migrations").mkdir()
    hosts = {"lab1": host_vars(lab.info, tmp_path, dbops_health_timeout=15,
                               dbops_migrations_dir=str(tmp_path / "migrations"))}
    return dict(inst=lab, work=tmp_path, inventory=write_inventory(tmp_path / "inventory.json", hosts))


def repoint_first(inst):
    """The state after the repoint: the app healthy on its data, so that the
    switch is the only thing the run changes."""
    inst.set_env("DB_NAME", SOURCE)
    docker("restart", "-t", "2", inst.app)
    assert wait_for(lambda: inst.health()[0] == 200, timeout=30), inst.health()


def consolidate(case, *args, env=None):
    proc = run_playbook(PLAYBOOK, case["inventory"], *args, env=env)
    reports = sorted((case["work"] / "reports").glob("lab1-*.json"))
    assert reports, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads(reports[-1].read_text())


def prepared_transaction(inst, database, gid):
    """Pin `database` with a prepared transaction: no session to end, yet DROP
    and RENAME refuse ("being accessed by other users"), as after a crashed
    two-phase commit."""
    if inst.psql("postgres", "SHOW max_prepared_transactions") == [["0"]]:
        inst.psql("postgres", "ALTER SYSTEM SET max_prepared_transactions = 4")
        docker("restart", inst.db)
        assert wait_for(lambda: docker("exec", inst.db, "pg_isready", "-q", check=False).returncode == 0,
                        timeout=60)
        assert wait_for(lambda: inst.health()[0] is not None, timeout=30)
    inst.psql(database, "BEGIN; PREPARE TRANSACTION '%s'" % gid)


def finish_prepared(inst):
    for gid, database in inst.psql("postgres", "SELECT gid, database FROM pg_prepared_xacts"):
        inst.psql(database, "ROLLBACK PREPARED '%s'" % gid)


def assert_rolled_back(case, proc, report, env_before, rows_before, failed_step):
    inst = case["inst"]
    message = report["message"]
    assert proc.returncode != 0
    assert report["result"] == "rolled_back", message
    assert "\n" not in message and failed_step in message, message
    status, body = inst.health()
    assert status == 200 and body["database"] == SOURCE, (status, body)
    assert inst.docker_health() == "healthy"
    assert inst.env_file.read_bytes() == env_before
    assert snapshot(inst, SOURCE) == rows_before
    assert blocked_databases(inst) == []
    assert docker("inspect", inst.app + ".dbops-previous", check=False).returncode != 0
    journals = sorted((case["work"] / "backups" / "journal").glob("*.json"))
    assert json.loads(journals[-1].read_text())["state"] == "rolled_back"
    assert not (case["work"] / "backups" / "journal" / "run.lock").exists()


def engine_refuses(case, tmp_path, pattern, failed_step):
    """consolidate.yml with the Docker Engine refusing once the call matching
    `pattern`; asserts the rollback. The lab must be in the state to keep."""
    inst = case["inst"]
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    proxy = DockerFaultProxy(tmp_path / "docker.sock", "POST", pattern)
    try:
        proc, report = consolidate(case, env={"DOCKER_HOST": proxy.url})
    finally:
        proxy.close()
    assert proxy.hits, "the fault never struck"
    assert_rolled_back(case, proc, report, env_before, rows_before, failed_step)


def test_stop_refused_by_the_engine(case, tmp_path):
    inst = case["inst"]
    repoint_first(inst)
    engine_refuses(case, tmp_path, r"/containers/[^/]+/stop", "Stop the app")
    assert "qadhya" in [row[0] for row in inst.psql("postgres", "SELECT datname FROM pg_database")]


def test_drop_fails_after_the_repoint_goes_back_to_the_source(case):
    # The 0.1.0 bug: a failure after the app stopped but before the rename sent
    # the app to the configured, empty database and left the env file behind.
    # The pin arrives once the window opened, after app_switch's rehearsal had
    # checked; the app's stop (its SIGTERM, the last word's scan) leaves the
    # time to pin it before the drop.
    inst = case["inst"]
    prepared_transaction(inst, "postgres", "warm-up")
    finish_prepared(inst)
    watcher = JournalWatcher(case["work"] / "backups" / "journal", "window",
                             lambda: prepared_transaction(inst, "qadhya", "pin-target"), occurrence=1)
    try:
        proc, report = consolidate(case)
    finally:
        watcher.close()
        finish_prepared(inst)
    assert watcher.fired.is_set() and watcher.error is None, watcher.error
    env_after_repoint = inst.env_file.read_bytes()
    assert b"DB_NAME=moncabinet" in env_after_repoint
    assert_rolled_back(case, proc, report, env_after_repoint, snapshot(inst, SOURCE),
                       "Rename the database")
    # Refused by the window's own check of pg_prepared_xacts, or, when the pin lands between that
    # check and the drop, by the server at the drop: both before the rename, both undone the same way.
    assert ("prepared transactions pin" in report["message"]
            or 'database "qadhya" is being accessed by other users' in report["message"]), report["message"]


def test_prepared_transaction_is_refused_before_the_app_stops(case):
    inst = case["inst"]
    repoint_first(inst)
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    prepared_transaction(inst, "qadhya", "pin-early")
    try:
        proc, report = consolidate(case)
    finally:
        finish_prepared(inst)
    assert proc.returncode != 0 and report["result"] == "failed", report["message"]
    assert "prepared transactions pin" in report["message"] and "nothing was changed" in report["message"]
    assert report.get("downtime_s") is None
    assert inst.health()[0] == 200 and inst.env_file.read_bytes() == env_before
    assert snapshot(inst, SOURCE) == rows_before


def test_env_write_fails_renames_back(case):
    inst = case["inst"]
    repoint_first(inst)
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    env_file = str(inst.env_file)

    # Read-only from the start: the window's write is the first write of the run
    # (the app was repointed by hand), so it fails after the rename, a few
    # milliseconds after it - too soon for a watcher to strike in between.
    subprocess.run(["mount", "--bind", env_file, env_file], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", env_file], check=True)
    try:
        proc, report = consolidate(case)
    finally:
        while subprocess.run(["umount", env_file], capture_output=True, check=False).returncode == 0:
            pass
    assert_rolled_back(case, proc, report, env_before, rows_before, "Write %s" % env_file)
    assert "renamed qadhya back to moncabinet" in report["message"]


def test_start_refused_by_the_engine(case, tmp_path):
    repoint_first(case["inst"])
    engine_refuses(case, tmp_path, r"/containers/[^/]+/start", "Start the app")


def test_an_app_failing_before_the_run_is_put_back_running_not_held_to_a_200(case, tmp_path):
    # The health URL never answers 200 on the old database either: the app
    # already failed there before the run (the lab's fault switch). When the
    # switch fails, the rollback's own start is judged against what the app
    # was before the run, running but failing, never against a 200 that will
    # not come: it puts everything back and says so, instead of reporting a
    # rollback that could not finish.
    inst = case["inst"]
    inst.set_env("DB_NAME", SOURCE)
    with inst.env_file.open("a", encoding="utf-8") as handle:
        handle.write("LAB_FAIL_ON_DB=%s\n" % SOURCE)
    docker("restart", "-t", "2", inst.app)
    assert wait_for(lambda: inst.health()[0] == 503, timeout=30), inst.health()
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    proxy = DockerFaultProxy(tmp_path / "docker.sock", "POST", r"/containers/[^/]+/start")
    try:
        proc, report = consolidate(case, env={"DOCKER_HOST": proxy.url})
    finally:
        proxy.close()
    assert proxy.hits, "the fault never struck"
    message = report["message"]
    assert proc.returncode != 0 and report["result"] == "rolled_back", message
    assert "\n" not in message and "Start the app" in message, message
    assert "ROLLBACK FAILED" not in message, message
    status, body = inst.health()
    assert status == 503 and body["database"] == SOURCE, (status, body)  # as it was: running, failing
    assert docker("inspect", "--format", "{{.State.Running}}", inst.app).stdout.strip() == "true"
    assert inst.env_file.read_bytes() == env_before
    assert snapshot(inst, SOURCE) == rows_before
    assert blocked_databases(inst) == []
    assert not (case["work"] / "backups" / "journal" / "run.lock").exists()


def test_recreate_refused_by_the_engine(case, tmp_path):
    inst = case["inst"]
    inst.reset("--mode", "created")
    inst.set_env("DB_NAME", SOURCE)
    run_lab("recreate-app", "--instance", INSTANCE, "--mode", "created")
    assert wait_for(lambda: inst.health()[0] == 200, timeout=30), inst.health()
    engine_refuses(case, tmp_path, r"/containers/create", "Start the app")


def test_app_never_healthy_on_the_new_name(case):
    inst = case["inst"]
    repoint_first(inst)
    with inst.env_file.open("a", encoding="utf-8") as handle:
        handle.write("LAB_FAIL_ON_DB=qadhya\n")
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    started = time.monotonic()
    proc, report = consolidate(case)
    assert_rolled_back(case, proc, report, env_before, rows_before, "Start the app")
    assert time.monotonic() - started < 240


def consolidate_with_a_statement_at_start(case, sql):
    """consolidate.yml, with `sql` run in the renamed database as soon as the app's start is journalled."""
    watcher = JournalWatcher(case["work"] / "backups" / "journal", "app_start",
                             lambda: case["inst"].psql("qadhya", sql))
    try:
        proc, report = consolidate(case)
    finally:
        watcher.close()
    assert watcher.fired.is_set() and watcher.error is None, watcher.error
    return proc, report


def test_a_write_after_the_rename_is_named_and_kept_not_rolled_back(case):
    # Someone (a cron job, the app itself once it serves) writes as soon as the
    # renamed database accepts connections. The proof of the switch is made in
    # the window (the last word's counts and checksums, the same database OID
    # under the new name); the check after the start names what changed since,
    # and a healthy switch is not rolled back for it (docs/decisions/0007).
    inst = case["inst"]
    repoint_first(inst)
    inst.psql(SOURCE, "CREATE TABLE audit_log (id serial PRIMARY KEY, note text)")
    rows_before = snapshot(inst, SOURCE)
    proc, report = consolidate_with_a_statement_at_start(case, "INSERT INTO audit_log (note) VALUES ('late')")
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    assert report["counts_after"]["audit_log"] == report["counts_before"]["audit_log"] + 1
    assert "audit_log 0 -> 1" in proc.stdout, proc.stdout[-2000:]
    rows_after = snapshot(inst, "qadhya")
    assert rows_after.pop("public.audit_log")[0] == rows_before.pop("public.audit_log")[0] + 1
    assert rows_after == rows_before
    journal = json.loads(sorted((case["work"] / "backups" / "journal").glob("*.json"))[-1].read_text())
    verify = [e for e in journal["entries"] if e["step"] == "verify"][-1]
    assert verify["checksums_before"].pop("audit_log") != verify["checksums_after"].pop("audit_log")
    assert verify["checksums_before"] == verify["checksums_after"]
    assert inst.health()[1]["database"] == "qadhya"
    assert blocked_databases(inst) == []


def test_a_table_gone_after_the_start_is_a_loss_and_rolls_the_switch_back(case):
    # The check after the window judges what app_switch counted once the app
    # was back: a table of the last word missing then is a loss, never the
    # app's own writes, so the switch is undone (the app back on the old
    # name, healthy) and the one line names the table.
    inst = case["inst"]
    repoint_first(inst)
    inst.psql(SOURCE, "CREATE TABLE scratch_notes (id int)")
    rows_before = snapshot(inst, SOURCE)
    proc, report = consolidate_with_a_statement_at_start(case, "DROP TABLE scratch_notes")
    assert proc.returncode != 0 and report["result"] == "rolled_back", report["message"]
    assert "tables missing after the switch: scratch_notes" in report["message"], report["message"]
    status, body = inst.health()
    assert status == 200 and body["database"] == SOURCE, (status, body)
    rows_before.pop("public.scratch_notes")
    assert snapshot(inst, SOURCE) == rows_before
    assert blocked_databases(inst) == []


ROLLBACK = REPO / "playbooks" / "rollback.yml"


def newest_report(case):
    return json.loads(sorted((case["work"] / "reports").glob("lab1-*.json"))[-1].read_text())


def test_rollback_playbook_puts_a_success_back_and_then_changes_nothing(case):
    inst = case["inst"]
    repoint_first(inst)
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    proc, report = consolidate(case, "-vvv")
    assert report["result"] == "success", report["message"]
    assert inst.health()[1]["database"] == "qadhya"
    time.sleep(1)  # reports are named by the second they start in

    # Check mode first: it says what it would undo and changes nothing. Its steps only say what
    # they would do, so the restore of the dropped qadhya is not judged against the qadhya the
    # rename back would free (it checks the backup it would restore from instead).
    env_after = inst.env_file.read_bytes()
    databases_after = inst.psql("postgres", "SELECT datname FROM pg_database")
    planned = run_playbook(ROLLBACK, case["inventory"], "--check")
    assert planned.returncode == 0, planned.stdout[-3000:]
    printed = " ".join(planned.stdout.split())
    assert "lab1: PLANNED" in printed and "would roll back: renamed qadhya back to moncabinet" in printed, \
        planned.stdout[-3000:]
    assert inst.env_file.read_bytes() == env_after
    assert inst.psql("postgres", "SELECT datname FROM pg_database") == databases_after
    assert inst.health()[1]["database"] == "qadhya"
    # A later consolidation of the host changes nothing: its journal (unchanged) is newer, and
    # the rollback still finds the run that changed things.
    time.sleep(1)
    rerun, again = consolidate(case)
    assert rerun.returncode == 0 and again["result"] == "unchanged", again["message"]
    time.sleep(1)

    first = run_playbook(ROLLBACK, case["inventory"], "-vvv")
    # The password is in the env file and in both containers' env: never in what a run prints.
    password = inst.info["db_password"]
    for out in (proc.stdout + proc.stderr, first.stdout + first.stderr):
        assert password not in out
    journal_dir = case["work"] / "backups" / "journal"
    assert not [p for p in journal_dir.iterdir() if password in p.read_text()]
    assert not [p for p in (case["work"] / "reports").iterdir() if password in p.read_text()]
    assert {oct(p.stat().st_mode & 0o777) for p in journal_dir.iterdir()} == {"0o600"}
    report = newest_report(case)
    assert first.returncode == 0, first.stdout[-2000:]
    assert report["result"] == "rolled_back", report["message"]
    assert "renamed qadhya back to moncabinet" in report["message"]
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    assert inst.env_file.read_bytes() == env_before
    assert snapshot(inst, SOURCE) == rows_before
    assert "qadhya" in [row[0] for row in inst.psql("postgres", "SELECT datname FROM pg_database")]
    assert blocked_databases(inst) == []
    time.sleep(1)

    second = run_playbook(ROLLBACK, case["inventory"])
    assert second.returncode == 0 and newest_report(case)["result"] == "unchanged"
    assert "nothing to roll back" in newest_report(case)["message"]
    assert re.search(r"lab1\s*:.*\bchanged=0\b", second.stdout), second.stdout[-1500:]


def crash_at(case, step, occurrence=1):
    """Start consolidate.yml and SIGKILL its whole process group once the
    journal reaches `step`: the state a power cut or an OOM kill leaves."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), str(PLAYBOOK), "-i",
                             str(case["inventory"])], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    watcher = JournalWatcher(case["work"] / "backups" / "journal", step,
                             lambda: os.killpg(proc.pid, signal.SIGKILL), occurrence=occurrence)
    try:
        proc.wait(timeout=600)
    finally:
        watcher.close()
    assert watcher.fired.is_set() and watcher.error is None, watcher.error
    assert (case["work"] / "backups" / "journal" / "run.lock").exists()


@pytest.mark.parametrize("step", ["db_rename", "env_write", "app_start"])
def test_a_crash_in_the_window_then_a_rerun_converges(case, step):
    inst = case["inst"]
    repoint_first(inst)
    rows_before = snapshot(inst, SOURCE)
    crash_at(case, step)
    time.sleep(1)
    proc, report = consolidate(case)
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    assert "was interrupted" in report.get("recovered", ""), report
    status, body = inst.health()
    assert status == 200 and body["database"] == "qadhya", (status, body)
    assert snapshot(inst, "qadhya") == rows_before
    assert blocked_databases(inst) == []
    assert docker("inspect", inst.app + ".dbops-previous", check=False).returncode != 0
    assert not (case["work"] / "backups" / "journal" / "run.lock").exists()
    assert not list((case["work"] / "backups").glob(".*.tmp"))


def test_a_killed_playbook_leaves_its_switch_running_and_the_rerun_waits_for_it(case):
    # Only ansible-playbook dies (an operator's kill, a controller OOM): the
    # app_switch process it started goes on, on the Docker host, to the end of
    # its window. The rerun waits for it (the window lock) before it undoes
    # the dead run's journal, and then consolidates again.
    inst = case["inst"]
    repoint_first(inst)
    rows_before = snapshot(inst, SOURCE)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    first = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), str(PLAYBOOK), "-i",
                              str(case["inventory"])], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)

    held = []

    def signal_all(sig):
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill_the_playbook_only():
        # Ansible's workers run in sessions of their own: the playbook's own descendants are the
        # processes to hold, found before it dies (afterwards they belong to init).
        held.extend(descendants(first.pid))
        os.kill(first.pid, signal.SIGKILL)
        # The orphans (worker, module) are held for a few seconds, so that the rerun is sure to
        # reach them still in their window; they then go on as if nothing happened.
        signal_all(signal.SIGSTOP)
        threading.Timer(8, signal_all, args=(signal.SIGCONT,)).start()

    watcher = JournalWatcher(case["work"] / "backups" / "journal", "db_block", kill_the_playbook_only)
    try:
        first.wait(timeout=600)
        assert watcher.fired.is_set() and watcher.error is None, watcher.error
        proc, report = consolidate(case)
    finally:
        watcher.close()
        time.sleep(0.5)
        signal_all(signal.SIGCONT)
        signal_all(signal.SIGKILL)  # the orphaned worker, if it is still there
    journals = sorted((case["work"] / "backups" / "journal").glob("*.json"))
    dead = json.loads(journals[-2].read_text())
    # The orphan finished its window: the dead run's journal holds its close.
    assert [e.get("edge") for e in dead["entries"] if e["step"] == "window"] == ["open", "close"], dead
    assert dead["state"] == "undone"
    # The rerun undid the dead run only once its switch had ended.
    closed = [e["at"] for e in dead["entries"] if e["step"] == "window" and e["edge"] == "close"][0]
    started = json.loads(journals[-1].read_text())["started_at"]
    assert started > closed, (started, closed)
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    assert "was interrupted" in report.get("recovered", ""), report
    assert inst.health()[1]["database"] == "qadhya"
    assert snapshot(inst, "qadhya") == rows_before
    assert blocked_databases(inst) == []


def test_a_crash_in_the_window_then_the_rollback_playbook_puts_it_back(case):
    inst = case["inst"]
    repoint_first(inst)
    env_before, rows_before = inst.env_file.read_bytes(), snapshot(inst, SOURCE)
    crash_at(case, "env_write")
    proc = run_playbook(ROLLBACK, case["inventory"])
    report = newest_report(case)
    assert proc.returncode == 0 and report["result"] == "rolled_back", report["message"]
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    assert inst.env_file.read_bytes() == env_before
    assert snapshot(inst, SOURCE) == rows_before
    assert blocked_databases(inst) == []
    assert not (case["work"] / "backups" / "journal" / "run.lock").exists()


def test_a_second_run_while_one_is_in_progress_fails_at_once_naming_it(case):
    inst = case["inst"]
    repoint_first(inst)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    first = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), str(PLAYBOOK), "-i",
                              str(case["inventory"])], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock = case["work"] / "backups" / "journal" / "run.lock"
    try:
        assert wait_for(lock.exists, timeout=120)
        second = run_playbook(PLAYBOOK, case["inventory"])
        assert second.returncode != 0
        assert "another run of qadhya.dbops is in progress" in second.stdout
        assert json.loads(lock.read_text())["run_id"] in second.stdout
    finally:
        assert first.wait(timeout=600) == 0
    assert inst.health()[1]["database"] == "qadhya"
