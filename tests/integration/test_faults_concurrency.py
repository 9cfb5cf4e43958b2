"""A consolidation and a scheduled backup (or a migration) never run on one
host at once, on a real lab instance of this module's own.

backup.yml and migrate.yml take the run lock of consolidate.yml and
rollback.yml (run_journal, tasks/run_lock.yml). A session of the test holding
an ACCESS EXCLUSIVE lock on a table keeps a run waiting in its dump for as
long as the test needs (pg_dump waits for it), so the second run always
meets the first one in progress: it fails before touching anything with one
line naming the holder. A consolidation killed mid-switch is never undone by
a nightly backup: the backup names it and the playbooks that finish or undo
it; rollback.yml then puts everything back and the next backup succeeds.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from alertkit import Receiver
from faultkit import JournalWatcher, blocked_databases, repointed_case, snapshot
from labkit import REPO, docker, instance_name, run_playbook, wait_for

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fconc")
SOURCE, TARGET = "moncabinet", "qadhya"
PLAYBOOKS = REPO / "playbooks"
HELD_TABLE = "users"


@pytest.fixture
def case(module_lab, tmp_path):
    """The incident state, the app repointed at its data (healthy), an inventory."""
    return repointed_case(module_lab, tmp_path, SOURCE, dbops_health_timeout=15)


def start(case, playbook, *args):
    """ansible-playbook in the background, in a process group of its own; its output in a file."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    output = case["work"] / ("%s-%d.out" % (playbook, len(list(case["work"].glob("*.out")))))
    with output.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"),
                                 str(PLAYBOOKS / (playbook + ".yml")), "-i", str(case["inventory"]), *args],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc.output = output
    return proc


def finish(proc, timeout=300):
    """(exit status, output) of a run started by start()."""
    status = proc.wait(timeout=timeout)
    return status, proc.output.read_text()


@contextlib.contextmanager
def table_held(inst):
    """A session of the test holding ACCESS EXCLUSIVE on HELD_TABLE until the block ends:
    a dump of the source waits for it (up to db_backup's 30 s lock_wait_timeout)."""
    holder = subprocess.Popen(["docker", "exec", "-i", inst.db, "psql", "-U", inst.info["db_user"], "-d",
                               SOURCE, "-XAtq", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    holder.stdin.write("BEGIN;\nLOCK TABLE %s IN ACCESS EXCLUSIVE MODE;\n" % HELD_TABLE)
    holder.stdin.flush()
    granted = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = '%s' "
               "AND l.granted AND l.mode = 'AccessExclusiveLock'" % HELD_TABLE)
    try:
        assert wait_for(lambda: inst.psql(SOURCE, granted) == [["1"]], timeout=20)
        yield holder
    finally:
        with contextlib.suppress(OSError):
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()
        holder.wait(timeout=30)


def waiting_on_the_table(inst):
    """A dump (or its snapshot's count) of ours is waiting for the held table."""
    return inst.psql(SOURCE, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                             "AND datname = '%s'" % SOURCE) != [["0"]]


def lock_file(case):
    return case["backups"] / "journal" / "run.lock"


def holder(case):
    """The run lock's content, {} when free (or caught between two writes)."""
    try:
        return json.loads(lock_file(case).read_text())
    except (OSError, ValueError):
        return {}


def journals(case):
    return {p.stem: json.loads(p.read_text()) for p in (case["backups"] / "journal").glob("*.json")}


def report(case, kind=""):
    """The newest JSON report of a run: of backup.yml or migrate.yml (`kind`), else of
    consolidate.yml or rollback.yml."""
    directory = case["work"] / "reports" / kind
    newest = max(directory.glob("lab1-*.json"), key=lambda path: path.stat().st_mtime)
    return json.loads(newest.read_text())


def databases(inst):
    rows = inst.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate")
    return sorted(row[0] for row in rows)


def dumps(case):
    return sorted(p.name for p in case["backups"].glob("*.dump"))


def app_started_at(inst):
    return docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", inst.app).stdout.strip()


def assert_names_the_holder(line, lock, playbook, proc):
    """The one line: the holder's playbook, run id, start time and controller pid, and the fix."""
    assert "\n" not in line, line
    for part in ("another run of qadhya.dbops is in progress on this host",
                 "run %s of %s.yml started %s by pid %d on " % (lock["run_id"], playbook, lock["started_at"],
                                                                 proc.pid),
                 "wait for it to finish, then rerun"):
        assert part in line, (part, line)


def assert_nothing_left_running(case):
    assert not lock_file(case).exists()
    assert [run_id for run_id, doc in journals(case).items() if doc["state"] == "running"] == []
    assert not list(case["backups"].glob(".*")), list(case["backups"].glob(".*"))  # no partial dump
    assert blocked_databases(case["inst"]) == []


def test_a_consolidation_started_while_the_backup_dumps_is_refused_before_touching_anything(case):
    inst = case["inst"]
    rows, env_before, app_before = snapshot(inst, SOURCE), inst.env_file.read_bytes(), app_started_at(inst)
    names = databases(inst)
    with table_held(inst):
        backup = start(case, "backup")
        assert wait_for(lambda: holder(case).get("playbook") == "backup", timeout=90), finish(backup)
        assert wait_for(lambda: waiting_on_the_table(inst), timeout=60), "the backup never reached its dump"
        lock = holder(case)
        consolidation = run_playbook(PLAYBOOKS / "consolidate.yml", case["inventory"])
        # Refused while the backup was still dumping: the lock still names it.
        assert holder(case)["run_id"] == lock["run_id"] and backup.poll() is None
    assert consolidation.returncode != 0
    refused = report(case)
    assert refused["result"] == "failed", refused
    assert_names_the_holder(refused["message"], lock, "backup", backup)
    assert refused["message"].count("\n") == 0 and "rerun consolidate.yml" in refused["message"]
    # Before the app was touched: same container run, env file and databases, no backup of its own.
    assert app_started_at(inst) == app_before and inst.env_file.read_bytes() == env_before
    assert databases(inst) == names == ["moncabinet", "postgres", "qadhya"]

    status, output = finish(backup)
    assert status == 0, output[-3000:]
    done = report(case, "backup")
    assert done["result"] == "success" and done["backup"]["verified"], done
    assert dumps(case) == [Path(done["backup"]["path"]).name]
    manifest = json.loads(Path(done["backup"]["manifest_path"]).read_text())
    assert manifest["verified"]["ok"]
    assert manifest["row_counts"] == {table.removeprefix("public."): n for table, (n, _sum) in rows.items()}
    assert snapshot(inst, SOURCE) == rows
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    # The refused consolidation opened no journal; the backup's is closed.
    assert [(doc["playbook"], doc["state"]) for doc in journals(case).values()] == [("backup", "success")]
    assert_nothing_left_running(case)


def test_a_backup_or_a_migration_started_during_a_consolidation_is_refused_and_alerts(case):
    inst = case["inst"]
    rows = snapshot(inst, SOURCE)
    migrations_before = inst.psql(SOURCE, "SELECT count(*) FROM _migrations")
    with contextlib.ExitStack() as stack:
        rx = stack.enter_context(Receiver())
        consolidation = start(case, "consolidate")
        # Held in its own dump, after its pre-check: the lock stays taken while the others try.
        held = JournalWatcher(case["backups"] / "journal", "checkpoint",
                              lambda: stack.enter_context(table_held(inst)), timeout=120)
        stack.callback(held.close)
        assert wait_for(held.fired.is_set, timeout=120) and held.error is None, held.error
        lock = holder(case)
        assert lock["playbook"] == "consolidate", lock
        backup = start(case, "backup", "-e", "dbops_alert_webhook_url=" + rx.webhook_url())
        migrate = start(case, "migrate", "-e", "dbops_migrations_dir=%s" % (REPO / "migrations"))
        (backup_status, backup_out), (migrate_status, migrate_out) = finish(backup), finish(migrate)
        assert holder(case)["run_id"] == lock["run_id"] and consolidation.poll() is None
        hooks = rx.webhooks()
    assert backup_status != 0 and migrate_status != 0, backup_out[-2000:] + migrate_out[-2000:]
    refused_backup, refused_migration = report(case, "backup"), report(case, "migrate")
    assert refused_backup["result"] == "failed" and refused_migration["result"] == "failed"
    for line, playbook in ((refused_backup["message"], "backup"), (refused_migration["message"], "migrate")):
        assert line.startswith("pre-check: another run"), line
        assert_names_the_holder(line, lock, "consolidate", consolidation)
        assert "rerun %s.yml" % playbook in line
    assert "backup failed: " + refused_backup["message"] in backup_out
    # The scheduled backup that was refused still alerts, naming the holder.
    assert len(hooks) == 1 and lock["run_id"] in json.dumps(hooks[0]), hooks
    assert refused_backup["backup"] == {} and refused_migration.get("applied", []) == []

    status, output = finish(consolidation)
    assert status == 0, output[-3000:]
    assert report(case)["result"] == "success"
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == TARGET
    assert snapshot(inst, TARGET) == rows
    # Nothing of the refused migration ran: the migrations table as the consolidation left it.
    assert inst.psql(TARGET, "SELECT count(*) FROM _migrations") == migrations_before
    assert_nothing_left_running(case)


def test_a_backup_after_a_killed_consolidation_refuses_to_undo_it_then_rollback_and_backup(case):
    inst = case["inst"]
    rows, env_before = snapshot(inst, SOURCE), inst.env_file.read_bytes()
    consolidation = start(case, "consolidate")
    kill = JournalWatcher(case["backups"] / "journal", "env_write", lambda: os.killpg(consolidation.pid,
                                                                                     signal.SIGKILL))
    try:
        assert consolidation.wait(timeout=300) == -signal.SIGKILL, "the run ended before the strike"
    finally:
        kill.close()
    dead = holder(case)
    assert dead["playbook"] == "consolidate" and journals(case)[dead["run_id"]]["state"] == "running"
    before = dumps(case)

    backup = run_playbook(PLAYBOOKS / "backup.yml", case["inventory"])
    assert backup.returncode != 0
    line = report(case, "backup")["message"]
    assert "\n" not in line, line
    for part in ("pre-check: run %s of consolidate.yml started %s by pid %d on " % (
                     dead["run_id"], dead["started_at"], consolidation.pid),
                 "was interrupted", "finish it with consolidate.yml or undo it with rollback.yml",
                 "then rerun backup.yml; this run changed nothing"):
        assert part in line, (part, line)
    # Not undone, not taken over: the dead run's lock and journal as it left them, no dump written.
    assert holder(case)["run_id"] == dead["run_id"] and journals(case)[dead["run_id"]]["state"] == "running"
    assert dumps(case) == before

    rollback = run_playbook(PLAYBOOKS / "rollback.yml", case["inventory"])
    undone = report(case)
    assert rollback.returncode == 0 and undone["result"] == "rolled_back", undone["message"]
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    assert inst.env_file.read_bytes() == env_before and snapshot(inst, SOURCE) == rows

    again = run_playbook(PLAYBOOKS / "backup.yml", case["inventory"])
    assert again.returncode == 0, again.stdout[-3000:]
    assert report(case, "backup")["result"] == "success"
    assert_nothing_left_running(case)


def test_a_killed_backups_lock_is_taken_over_with_nothing_to_undo_and_rollback_skips_later_backups(case):
    inst = case["inst"]
    rows, env_before = snapshot(inst, SOURCE), inst.env_file.read_bytes()
    with table_held(inst):
        backup = start(case, "backup")
        assert wait_for(lambda: waiting_on_the_table(inst), timeout=90), finish(backup)
        os.killpg(backup.pid, signal.SIGKILL)
        assert backup.wait(timeout=30) == -signal.SIGKILL
    dead = holder(case)
    assert dead["playbook"] == "backup" and journals(case)[dead["run_id"]]["state"] == "running"
    # Ansible's worker runs in a session of its own: the dump it started ends on its own first.
    assert wait_for(lambda: not list(case["backups"].glob(".*.partial-*")), timeout=60)

    consolidation = run_playbook(PLAYBOOKS / "consolidate.yml", case["inventory"])
    done = report(case)
    assert consolidation.returncode == 0 and done["result"] == "success", done["message"]
    assert "interrupted" not in json.dumps(done)  # a backup leaves nothing to undo, nothing to recover
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == TARGET
    assert snapshot(inst, TARGET) == rows
    runs = journals(case)
    (consolidated,) = [run_id for run_id, doc in runs.items() if doc["playbook"] == "consolidate"]
    assert runs[consolidated]["state"] == "success"
    assert runs[dead["run_id"]]["state"] == "failed" and runs[dead["run_id"]]["taken_over_by"] == consolidated

    # A backup after it keeps the newest journal; rollback.yml still undoes the consolidation.
    assert run_playbook(PLAYBOOKS / "backup.yml", case["inventory"]).returncode == 0
    rollback = run_playbook(PLAYBOOKS / "rollback.yml", case["inventory"])
    undone = report(case)
    assert rollback.returncode == 0 and undone["result"] == "rolled_back", undone["message"]
    assert inst.health()[0] == 200 and inst.health()[1]["database"] == SOURCE
    assert inst.env_file.read_bytes() == env_before and snapshot(inst, SOURCE) == rows
    runs = journals(case)
    assert runs[consolidated]["state"] == "undone"
    backups = sorted(doc["state"] for doc in runs.values() if doc["playbook"] == "backup")
    assert backups == ["failed", "success"], runs
    assert_nothing_left_running(case)
