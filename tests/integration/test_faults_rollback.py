"""A rollback that cannot finish, on a real lab instance of this module's own.

The switch fails (the Docker Engine refuses the app's start), and then the
rollback's own steps fail for real: a database took the old name meanwhile,
a prepared transaction pins the renamed database so the rename back is
refused, the app will not start on the old database either. Each run must
stop saying where the data, the env file and the app stand and print the
commands that finish by hand (never the password); then the commands, a
rerun of consolidate.yml or rollback.yml finish the job with every table's
rows and content checksum as before.
"""

import json
import subprocess

import pytest
from faultkit import DockerFaultProxy, JournalWatcher, blocked_databases, repointed_case, snapshot
from labkit import REPO, docker, instance_name, run_playbook, wait_for

pytestmark = pytest.mark.integration

INSTANCE = instance_name("frollback")
SOURCE, TARGET = "moncabinet", "qadhya"
CONSOLIDATE = REPO / "playbooks" / "consolidate.yml"
ROLLBACK = REPO / "playbooks" / "rollback.yml"
START = r"/containers/[^/]+/start"


@pytest.fixture
def case(module_lab, tmp_path):
    """The instance in the incident state with the app already repointed at its
    data (the switch is then the only change of the run), and an inventory."""
    case = repointed_case(module_lab, tmp_path, SOURCE, dbops_health_timeout=10)
    return dict(case, env_before=module_lab.env_file.read_bytes(), rows_before=snapshot(module_lab, SOURCE),
                target_before=snapshot(module_lab, TARGET))


def run(case, playbook, env=None):
    """(process, newest report) of one playbook run."""
    before = set((case["work"] / "reports").glob("lab1-*.json"))
    proc = run_playbook(playbook, case["inventory"], env=env)
    reports = sorted(set((case["work"] / "reports").glob("lab1-*.json")) - before)
    assert reports, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads(reports[-1].read_text())


def consolidate_with_starts_refused(case, times, strike=None, step="env_write"):
    """consolidate.yml with the engine refusing the app's first `times` starts, and
    `strike()` done once the journal records `step`."""
    proxy = DockerFaultProxy(case["work"] / "docker.sock", "POST", START, times=times)
    watcher = JournalWatcher(case["work"] / "backups" / "journal", step, strike) if strike else None
    try:
        proc, report = run(case, CONSOLIDATE, env={"DOCKER_HOST": proxy.url})
    finally:
        proxy.close()
        if watcher:
            watcher.close()
    assert len(proxy.hits) == times, proxy.hits
    if watcher:
        assert watcher.fired.is_set() and watcher.error is None, watcher.error
    return proc, report


def assert_failed_rollback_told(case, proc, report, failed_at, *parts):
    """Exit status, the one line (in the report and in what the user saw) naming the
    rollback's step that failed (`failed_at`) and the state (`parts`), the commands, no secret."""
    inst = case["inst"]
    message = report["message"]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and report["result"] == "failed", message
    assert "\n" not in message and message in out, message
    assert "Start the app" in message.split(" — ROLLBACK FAILED at ")[0], message  # the switch's fault
    rollback = message.split(" — ROLLBACK FAILED at ")[1]
    assert failed_at in rollback.split(". Now: ")[0], message
    for part in ("Now: ", "To finish by hand: ", "/journal)", *parts):
        assert part in rollback, (part, message)
    assert report["by_hand"] and all(cmd in message for cmd in report["by_hand"]), report
    password = inst.info["db_password"]
    assert password not in out and password not in json.dumps(report)
    assert blocked_databases(inst) == []
    assert docker("inspect", inst.app + ".dbops-previous", check=False).returncode != 0
    journal_dir = case["work"] / "backups" / "journal"
    assert not (journal_dir / "run.lock").exists()
    assert json.loads(sorted(journal_dir.glob("*.json"))[-1].read_text())["state"] == "failed"


def by_hand(commands):
    """Run the printed commands as a person would paste them."""
    for command in commands:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, (command, done.stdout, done.stderr)


def assert_back_on_the_source(case):
    inst = case["inst"]
    status, body = inst.health()
    assert status == 200 and body["database"] == SOURCE, (status, body)
    assert inst.env_file.read_bytes() == case["env_before"]
    assert snapshot(inst, SOURCE) == case["rows_before"]
    assert snapshot(inst, TARGET) == case["target_before"]  # the emptied target, restored
    assert blocked_databases(inst) == []


def databases(inst):
    rows = inst.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate")
    return sorted(row[0] for row in rows)


def test_a_database_that_took_the_old_name_stops_the_rollback_then_rollback_yml_finishes(case):
    """The rename back needs `moncabinet`, which someone created (empty) while the
    data was under `qadhya`: nothing is undone blindly (the app is not started
    on the empty newcomer); once it is moved aside, rollback.yml finishes."""
    inst = case["inst"]
    proc, report = consolidate_with_starts_refused(
        case, 1, lambda: inst.psql("postgres", "CREATE DATABASE %s" % SOURCE))
    assert_failed_rollback_told(
        case, proc, report, "a database named moncabinet (no data) appeared since",
        "the data is in qadhya", "moncabinet exists, holding no data",
        "the env file as this run wrote it (DB_NAME=qadhya)", "the app is stopped")
    aside = "-c 'ALTER DATABASE \"moncabinet\" RENAME TO \"moncabinet_appeared\"'"
    assert report["by_hand"][0].endswith(aside), report["by_hand"]
    assert snapshot(inst, TARGET) == case["rows_before"]
    assert snapshot(inst, SOURCE) == {}

    by_hand(report["by_hand"][:1])  # the person moves the newcomer aside, then asks for the rollback
    proc, report = run(case, ROLLBACK)
    assert proc.returncode == 0 and report["result"] == "rolled_back", report["message"]
    assert "renamed qadhya back to moncabinet" in report["message"], report["message"]
    assert_back_on_the_source(case)
    assert "moncabinet_appeared" in databases(inst)


def test_a_rename_back_refused_is_finished_by_the_printed_commands(case):
    """A prepared transaction pins `qadhya` once renamed: no session to end, the
    rename back is refused. The commands printed, run once it is resolved,
    put everything back."""
    inst = case["inst"]
    if inst.psql("postgres", "SHOW max_prepared_transactions") == [["0"]]:
        inst.psql("postgres", "ALTER SYSTEM SET max_prepared_transactions = 4")
        docker("restart", inst.db)
        assert wait_for(lambda: inst.health()[0] == 200, timeout=60), inst.health()
    try:
        proc, report = consolidate_with_starts_refused(
            case, 1, lambda: inst.psql(TARGET, "BEGIN; PREPARE TRANSACTION 'pin-back'"))
        assert_failed_rollback_told(
            case, proc, report, "prepared transactions pin", "Rename the database to moncabinet",
            "the data is in qadhya", "moncabinet does not exist",
            "the env file as this run wrote it (DB_NAME=qadhya)", "the app is stopped")
        assert snapshot(inst, TARGET) == case["rows_before"]
    finally:
        for gid, database in inst.psql("postgres", "SELECT gid, database FROM pg_prepared_xacts"):
            inst.psql(database, "ROLLBACK PREPARED '%s'" % gid)
    commands = report["by_hand"]
    # Rename back, recreate and restore the emptied target, the env file, start, check.
    starts = ["docker exec %s psql" % inst.db, "docker exec %s createdb" % inst.db,
              "docker exec -i %s" % inst.db, "cp -p ", "docker start %s" % inst.app, "curl -fsS "]
    assert len(commands) == len(starts), commands
    assert all(cmd.startswith(start) for cmd, start in zip(commands, starts, strict=True)), commands
    by_hand(commands)
    assert_back_on_the_source(case)


def test_an_app_that_will_not_start_on_the_old_database_then_a_rerun_consolidates(case):
    """The engine refuses the rollback's start as well: the data is back under its
    name and the env file restored, the app stopped, and the line says so; a
    rerun of consolidate.yml then consolidates."""
    inst = case["inst"]
    proc, report = consolidate_with_starts_refused(case, 2)
    assert_failed_rollback_told(
        case, proc, report, "Start the app", "the data is in moncabinet",
        "qadhya exists, holding no data", "the env file as before this run wrote it (DB_NAME=moncabinet)",
        "the app is stopped")
    assert report["by_hand"][0] == "docker start %s" % inst.app and len(report["by_hand"]) == 2, report
    assert report["by_hand"][1].startswith("curl -fsS ") and report["by_hand"][1].endswith(inst.health_url)
    assert inst.env_file.read_bytes() == case["env_before"]
    assert snapshot(inst, SOURCE) == case["rows_before"]

    proc, report = run(case, CONSOLIDATE)
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    status, body = inst.health()
    assert status == 200 and body["database"] == TARGET, (status, body)
    assert snapshot(inst, TARGET) == case["rows_before"]
    assert blocked_databases(inst) == [] and databases(inst) == ["postgres", TARGET]
