"""Clients that fight back, on a real lab instance of this module's own.

Sessions of the test hold an ACCESS EXCLUSIVE lock while the collection
counts (db_info, db_rename) or dumps (db_backup) the table, sit idle in a
transaction on the source at rename time, belong to a role our login cannot
end, or reconnect to the source in a loop during the rename. Every case
asserts the one line the user sees, the time it took, and that nothing was
lost or left half done.
"""

import json
import threading
import time

import psycopg2
import pytest
from faultkit import blocked_databases, snapshot
from labkit import REPO, docker, host_vars, instance_name, run_module, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fclients")
SOURCE, TARGET = "moncabinet", "qadhya"
LOCKER_APP = "fault-locker"


def container_ip(name):
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    return docker("inspect", "-f", fmt, name).stdout.split()[0]


def session(lab, dbname, app, user=None, password=None):
    """A real client session of the test, straight to the database container."""
    conn = psycopg2.connect(host=container_ip(lab.db), dbname=dbname, user=user or lab.info["db_user"],
                            password=password or lab.info["db_password"], connect_timeout=5,
                            application_name=app)
    conn.autocommit = True
    return conn


def hold_exclusive_lock(lab, table="knowledge_base", dbname=SOURCE):
    """(connection, pid) of a session holding ACCESS EXCLUSIVE on `table` in an open transaction."""
    conn = session(lab, dbname, LOCKER_APP)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % table)
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    return conn, pid


def databases(lab):
    return dict(lab.psql("postgres", "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate"))


def assert_names_the_locker(msg, pid, seconds):
    assert "\n" not in msg, msg
    for part in ("pid %d" % pid, "application %s" % LOCKER_APP, "since ", "knowledge_base",
                 "waited %gs (lock_wait_timeout)" % seconds, "pg_terminate_backend"):
        assert part in msg, (part, msg)
    assert "idle in transaction" in msg, msg


@pytest.fixture
def lab(module_lab):
    module_lab.reset("--mode", "mounted")
    yield module_lab


def test_a_lock_held_while_counting_stops_db_info_naming_the_session(lab):
    before = snapshot(lab, SOURCE)
    locker, pid = hold_exclusive_lock(lab)
    try:
        started = time.monotonic()
        result, output = run_module("db_info", lab.login_args(databases=[SOURCE], lock_wait_timeout=2))
        took = time.monotonic() - started
        # the module default (5 s) is what the playbooks' counts get
        default, dummy = run_module("db_info", lab.login_args(databases=[SOURCE]))
    finally:
        locker.rollback()
        locker.close()
    assert result["failed"], result
    assert took < 20, took
    assert_names_the_locker(result["msg"], pid, 2)
    assert "counting the rows of 'moncabinet'" in result["msg"]
    assert default["failed"] and "waited 5s (lock_wait_timeout)" in default["msg"], default
    assert lab.info["db_password"] not in output
    # once the lock is gone the same call counts, checksums included ('*': every table)
    done, dummy = run_module("db_info", lab.login_args(databases=[SOURCE], checksum_tables=["*"]))
    assert not done["failed"], done
    info = done["databases"][SOURCE]
    assert info["tables"]["knowledge_base"]["rows"] == 580
    assert sorted(info["checksums"]) == sorted(info["tables"])
    assert {k: v["rows"] for k, v in info["checksums"].items()} == {k: v["rows"] for k, v in
                                                                    info["tables"].items()}
    # the same hash aggregate as the tests' own snapshot, row for row
    assert {k.removeprefix("public."): "%d:%s" % (v[0], v[1]) for k, v in before.items()} == {
        k: v["checksum"] for k, v in info["checksums"].items()}
    assert snapshot(lab, SOURCE) == before


def test_a_lock_held_while_dumping_stops_the_backup_naming_the_session(lab, tmp_path):
    dest = tmp_path / "backups"
    locker, pid = hold_exclusive_lock(lab)
    try:
        started = time.monotonic()
        result, output = run_module("db_backup", lab.login_args(
            database=SOURCE, dest_dir=str(dest), lock_wait_timeout=2))
        took = time.monotonic() - started
    finally:
        locker.rollback()
        locker.close()
    assert result["failed"], result
    assert took < 30, took
    assert_names_the_locker(result["msg"], pid, 2)
    assert "the backup of 'moncabinet'" in result["msg"]
    assert "--lock-wait-timeout=2000ms" in " ".join(result.get("cmd") or []) or "cmd" not in result
    assert lab.info["db_password"] not in output
    assert sorted(p.name for p in dest.iterdir()) == [] if dest.exists() else True
    # no session of ours left behind
    assert lab.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                                "'qadhya.dbops%' OR application_name = 'pg_dump'") == [["0"]]


def test_a_lock_held_at_rename_time_refuses_before_anything(lab):
    before = snapshot(lab, SOURCE)
    locker, pid = hold_exclusive_lock(lab)
    try:
        result, dummy = run_module("db_rename", lab.login_args(
            name=SOURCE, target=TARGET, drop_empty_target=True, count_rows=True, lock_wait_timeout=1))
    finally:
        locker.rollback()
        locker.close()
    assert result["failed"], result
    assert_names_the_locker(result["msg"], pid, 1)
    assert "nothing was changed" in result["msg"]
    assert databases(lab) == {SOURCE: "t", TARGET: "t", "postgres": "t"}
    assert snapshot(lab, SOURCE) == before


def test_idle_in_transaction_and_reconnecting_clients_at_rename_time(lab):
    """An idle-in-transaction session holding row locks on the source, and a
    client reconnecting to it in a loop: the rename ends the first, shuts the
    second out, and every row arrives."""
    before = snapshot(lab, SOURCE)
    idle = session(lab, SOURCE, "fault-idle-in-tx")
    idle.autocommit = False
    with idle.cursor() as cur:
        cur.execute("SELECT id FROM knowledge_base ORDER BY id LIMIT 5 FOR UPDATE")
    stop, attempts, refused = threading.Event(), [0], []

    def reconnect():
        while not stop.is_set():
            attempts[0] += 1
            try:
                conn = session(lab, SOURCE, "fault-reconnecting")
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM knowledge_base")
                conn.close()
            except psycopg2.Error as exc:
                refused.append(str(exc).splitlines()[0])
            time.sleep(0.02)

    loop = threading.Thread(target=reconnect, daemon=True)
    loop.start()
    try:
        assert wait_for(lambda: attempts[0] >= 3, timeout=10)
        result, dummy = run_module("db_rename", lab.login_args(
            name=SOURCE, target=TARGET, drop_empty_target=True, count_rows=True))
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not result["failed"], result
    assert result["renamed"] and result["terminated"] >= 1, result
    assert result["row_counts"]["knowledge_base"] == 580
    with pytest.raises(psycopg2.Error), idle.cursor() as cur:  # ended, not waited for
        cur.execute("SELECT 1")
    idle.close()
    assert snapshot(lab, TARGET) == before
    assert blocked_databases(lab) == []
    assert SOURCE not in databases(lab)


def test_a_session_our_login_cannot_end_refuses_the_rename_cleanly(lab):
    """The run's login owns the databases but is no superuser; a superuser's
    session on the source cannot be ended by it: refused, everything as it was."""
    before = snapshot(lab, SOURCE)
    lab.psql("postgres", "CREATE ROLE fault_operator LOGIN CREATEDB PASSWORD 'op-secret-42' "
                         "IN ROLE pg_read_all_data")
    for name in (SOURCE, TARGET):
        lab.psql("postgres", 'ALTER DATABASE "%s" OWNER TO fault_operator' % name)
    superuser = session(lab, SOURCE, "fault-superuser")
    try:
        args = lab.login_args(name=SOURCE, target=TARGET, drop_empty_target=True, terminate_timeout=3,
                              login_user="fault_operator", login_password="op-secret-42")
        result, output = run_module("db_rename", args)
        with superuser.cursor() as cur:  # untouched
            cur.execute("SELECT count(*) FROM knowledge_base")
            assert cur.fetchone()[0] == 580
    finally:
        superuser.close()
    assert result["failed"], result
    msg = result["msg"]
    assert "\n" not in msg and "application 'fault-superuser'" in msg and "nothing was changed" in msg, msg
    assert "op-secret-42" not in output
    assert not result.get("renamed") and not result.get("dropped_target"), result
    assert databases(lab) == {SOURCE: "t", TARGET: "t", "postgres": "t"}
    assert snapshot(lab, SOURCE) == before


def test_consolidate_with_a_lock_held_stops_before_any_change_naming_it(lab, tmp_path):
    """The playbook level: the first count meets the lock, the run stops with the
    blocker's line, the app still up on its database, nothing changed."""
    env_before, before = lab.env_file.read_bytes(), snapshot(lab, SOURCE)
    health_before = lab.health()[0]  # the incident: the app up on the empty database
    (tmp_path / "migrations").mkdir()
    inventory = write_inventory(tmp_path / "inventory.json", {"lab1": host_vars(
        lab.info, tmp_path, dbops_migrations_dir=str(tmp_path / "migrations"))})
    locker, pid = hold_exclusive_lock(lab)
    try:
        started = time.monotonic()
        proc = run_playbook(REPO / "playbooks" / "consolidate.yml", inventory)
        took = time.monotonic() - started
    finally:
        locker.rollback()
        locker.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "pid %d (application %s" % (pid, LOCKER_APP) in out, out[-3000:]
    assert took < 180, took
    reports = sorted((tmp_path / "reports").glob("lab1-*.json"))
    if reports:
        report = json.loads(reports[-1].read_text())
        assert report["result"] == "failed", report["message"]
        assert "pid %d" % pid in report["message"], report["message"]
    assert lab.env_file.read_bytes() == env_before
    assert databases(lab) == {SOURCE: "t", TARGET: "t", "postgres": "t"}
    assert snapshot(lab, SOURCE) == before
    assert not list((tmp_path / "backups").glob("*.dump")) if (tmp_path / "backups").exists() else True
    assert wait_for(lambda: lab.health()[0] == health_before, timeout=30), (health_before, lab.health())
    assert lab.docker_health() != ""
