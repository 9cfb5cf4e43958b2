# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qadhya.dbops.db_migrate through real `ansible` against a lab instance.

Every scenario starts from the incident state: `moncabinet` holds the data,
an empty `_migrations` of the app's own shape (name PK, applied_at) and no
`user_validation_stats`. The main scenario works on `moncabinet` itself (the
`incident_lab` fixture resets the instance afterwards); the others work on a
copy of it (CREATE DATABASE ... TEMPLATE moncabinet, 0.5 s instead of a lab
reset), dropped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
INCIDENT = "20260213_kb_validation_gamification.sql"
INCIDENT_FILE = REPO / "migrations" / INCIDENT
ANSIBLE = Path(sys.executable).parent / "ansible"
DB = "moncabinet"


def _command(lab, tmp_path, args, check):
    module_args = dict(
        db_container=lab.db,
        login_user=lab.info["db_user"],
        login_password="{{ it_db_password }}",
        database=getattr(lab, "it_database", DB),
    )
    module_args.update(args)
    vars_file = tmp_path / "it_vars.json"
    if not vars_file.exists():
        vars_file.write_text(
            json.dumps(
                dict(it_db_password=lab.info["db_password"], ansible_python_interpreter=sys.executable)
            )
        )
        vars_file.chmod(0o600)
    argv = [str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local",
            "-m", "qadhya.dbops.db_migrate", "-a", json.dumps(module_args), "-e", "@%s" % vars_file]
    if check:
        argv.append("--check")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return argv, env


def _parse(proc):
    try:
        out = json.loads(proc.stdout)
        return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pytest.fail("ansible gave no result (rc %s): %s %s" % (proc.returncode, proc.stdout, proc.stderr))


def migrate(lab, tmp_path, check=False, **args):
    """Run the module once; return its result dict (with `failed` when it failed)."""
    argv, env = _command(lab, tmp_path, args, check)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=180, check=False)
    return _parse(proc)


def start_migrate(lab, tmp_path, **args):
    argv, env = _command(lab, tmp_path, args, False)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)


def dbname(lab):
    return getattr(lab, "it_database", DB)


def one(lab, query):
    rows = lab.psql(dbname(lab), query)
    return rows[0][0] if rows else None


def rows(lab, query):
    return lab.psql(dbname(lab), query)


class ScratchLab:
    """The lab instance seen through a private copy of the incident database."""

    def __init__(self, lab, database):
        self._lab = lab
        self.it_database = database

    def __getattr__(self, name):
        return getattr(self._lab, name)


@pytest.fixture
def scratch(lab_instance):
    """A copy of the incident-state `moncabinet`, dropped after the test."""
    name = "it_migrate_%s" % uuid.uuid4().hex[:8]
    lab_instance.psql("postgres", 'CREATE DATABASE "%s" TEMPLATE %s' % (name, DB))
    try:
        yield ScratchLab(lab_instance, name)
    finally:
        lab_instance.psql("postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def columns(lab, table="_migrations", schema="public"):
    regclass = quote_literal("%s.%s" % (quote_ident(schema), quote_ident(table)))
    return [r[0] for r in rows(
        lab, "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum" % regclass)]


def quote_ident(value):
    return '"' + value.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def hand_apply(lab, path):
    """What the operator did in the incident: psql with the file on stdin."""
    with open(path, "rb") as fh:
        subprocess.run(["docker", "exec", "-i", lab.db, "psql", "-U", lab.info["db_user"], "-d", dbname(lab),
                        "-X", "-q", "-v", "ON_ERROR_STOP=1"], stdin=fh, capture_output=True, check=True)


def migrations_dir(tmp_path, *files, name="migrations"):
    """A migrations dir holding the incident file plus (name, text) pairs."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(INCIDENT_FILE, d / INCIDENT)
    for fname, text in files:
        (d / fname).write_text(text, encoding="utf-8")
    return d


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_incident_apply_adopts_app_table(incident_lab, tmp_path, record_property):
    lab = incident_lab
    assert columns(lab) == ["name", "applied_at"]
    rows(lab, "INSERT INTO _migrations (name, applied_at) VALUES "
              "('20260101_init.sql', '2026-01-01'), ('20251201_removed.sql', '2025-12-01')")
    d = migrations_dir(tmp_path, ("20260101_init.sql", "SELECT 1;\n"))
    args = dict(migrations_dir=str(d))

    # check mode: the plan, and nothing written
    res = migrate(lab, tmp_path, check=True, **args)
    assert res["changed"] is True and "failed" not in res
    assert res["pending"] == [INCIDENT]
    assert res["already_applied"] == ["20260101_init.sql"]
    assert res["untracked_checksum"] == ["20260101_init.sql"]
    assert res["missing_files"] == ["20251201_removed.sql"]
    assert res["tracking_table_upgraded"] == ["checksum", "applied_by", "execution_ms", "adopted"]
    assert one(lab, "SELECT to_regclass('user_validation_stats') IS NULL") == "t"
    assert columns(lab) == ["name", "applied_at"]
    assert one(lab, "SELECT count(*) FROM _migrations") == "2"

    # real run
    started = time.monotonic()
    res = migrate(lab, tmp_path, **args)
    wall_ms = int((time.monotonic() - started) * 1000)
    assert res["changed"] is True and "failed" not in res, res.get("msg")
    assert [a["name"] for a in res["applied"]] == [INCIDENT]
    assert res["applied"][0]["sha256"] == sha256(INCIDENT_FILE)
    assert res["pending"] == [] and res["tracking_table_created"] is False
    assert res["tracking_table_upgraded"] == ["checksum", "applied_by", "execution_ms", "adopted"]
    assert one(lab, "SELECT count(*) FROM user_validation_stats") == "2"
    assert one(lab, "SELECT count(*) FROM v_user_validation_badges") == "2"
    assert one(lab, "SELECT count(*) FROM pg_proc WHERE proname IN "
                    "('get_user_badge', 'get_user_leaderboard_position')") == "2"
    assert one(lab, "SELECT count(*) FROM pg_indexes WHERE tablename = 'user_validation_stats'") == "4"
    # the app's table was adopted: old columns first, primary key kept, rows kept
    assert columns(lab) == ["name", "applied_at", "checksum", "applied_by", "execution_ms", "adopted"]
    assert one(lab, "SELECT conname FROM pg_constraint WHERE conrelid = '_migrations'::regclass "
                    "AND contype = 'p'") == "_migrations_pkey"
    row = rows(lab, "SELECT checksum, applied_by, execution_ms, adopted FROM _migrations "
                    "WHERE name = %s" % quote_literal(INCIDENT))[0]
    assert row[0] == sha256(INCIDENT_FILE)
    assert row[1] == "%s@%s" % (lab.info["db_user"], socket.gethostname())
    assert int(row[2]) >= 0 and row[3] == "f"
    assert one(lab, "SELECT count(*) FROM _migrations WHERE checksum IS NULL") == "2"
    record_property("incident_apply_execution_ms", res["applied"][0]["execution_ms"])
    record_property("incident_apply_wall_ms", wall_ms)
    record_property("incident_lock_wait_ms", res["lock_wait_ms"])
    print("incident migration: execution %d ms, ansible call %d ms, lock wait %d ms"
          % (res["applied"][0]["execution_ms"], wall_ms, res["lock_wait_ms"]))

    # idempotent rerun
    res = migrate(lab, tmp_path, **args)
    assert res["changed"] is False and res["applied"] == [] and res["pending"] == []
    assert res["already_applied"] == ["20260101_init.sql", INCIDENT]
    assert one(lab, "SELECT count(*) FROM _migrations") == "3"


def test_edited_applied_file_is_refused(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path)
    assert migrate(lab, tmp_path, migrations_dir=str(d))["changed"] is True
    original = sha256(d / INCIDENT)
    with open(d / INCIDENT, "a", encoding="utf-8") as fh:
        fh.write("\n-- edited after it was applied\n")
    (d / "20260301_next.sql").write_text("CREATE TABLE next_table (id int);\n")

    for check in (True, False):
        res = migrate(lab, tmp_path, check=check, migrations_dir=str(d))
        assert res.get("failed") is True
        assert ("migration %s was applied on " % INCIDENT) in res["msg"]
        assert ("with sha256 %s" % original[:12]) in res["msg"]
        assert ("the file now has %s" % sha256(d / INCIDENT)[:12]) in res["msg"]
        assert res["msg"].endswith("restore the original file or add a new migration")
        assert res["checksum_mismatches"][0]["recorded_sha256"] == original
        assert one(lab, "SELECT to_regclass('next_table') IS NULL") == "t"
        assert one(lab, "SELECT count(*) FROM _migrations") == "1"

    # restoring the file makes the run go through again
    shutil.copy(INCIDENT_FILE, d / INCIDENT)
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert [a["name"] for a in res["applied"]] == ["20260301_next.sql"]
    assert migrate(lab, tmp_path, migrations_dir=str(d))["changed"] is False


def snapshot(lab):
    """What a failed or rehearsed run must leave as it was: the tracking table and the relations."""
    return dict(
        columns=columns(lab),
        records=rows(lab, "SELECT t::text FROM _migrations t ORDER BY name"),
        relations=rows(lab, "SELECT c.oid::regclass::text, c.relkind FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
                            "'information_schema', 'pg_toast') ORDER BY 1"),
        functions=rows(lab, "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                            "ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1"),
        users=one(lab, "SELECT count(*) FROM users"),
    )


BROKEN_BATCH = (
    ("20260301_ok.sql", "CREATE TABLE ok_table (id int);\nINSERT INTO ok_table VALUES (1);\n"),
    ("20260302_also_ok.sql", "ALTER TABLE users ADD COLUMN nickname text;\n"),
    ("20260303_broken.sql", "CREATE TABLE half_table (id int);\n\nSELEC 1;\n"),
)


def test_syntax_error_in_the_third_file_applies_none_of_the_batch(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, *BROKEN_BATCH)
    (d / INCIDENT).unlink()
    before = snapshot(lab)

    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert res.get("failed") is True
    assert res["msg"] == (
        'migration 20260303_broken.sql failed at line 3 (character 36): syntax error at or near "SELEC"; '
        "nothing of its batch was applied (20260301_ok.sql, 20260302_also_ok.sql rolled back with it)")
    assert res["failed_migration"] == "20260303_broken.sql"
    assert res["applied"] == [] and res["changed"] is False
    assert res["pending"] == [name for name, dummy in BROKEN_BATCH]
    assert res["batches"] == [dict(files=[name for name, dummy in BROKEN_BATCH], transaction=True)]
    # _migrations unchanged: rows and the app's own shape (the upgrade was rolled back too)
    assert snapshot(lab) == before

    (d / "20260303_broken.sql").write_text("CREATE TABLE half_table (id int);\n\nSELECT 1;\n")
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert [a["name"] for a in res["applied"]] == [name for name, dummy in BROKEN_BATCH]
    assert one(lab, "SELECT count(*) FROM ok_table") == "1"
    assert migrate(lab, tmp_path, migrations_dir=str(d))["changed"] is False


def test_file_failing_halfway_leaves_nothing_of_it(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, ("20260301_half.sql",
                                  "CREATE TABLE half_done (id int PRIMARY KEY);\n"
                                  "INSERT INTO half_done VALUES (1), (2);\n"
                                  "UPDATE users SET email = email || '.x';\n"
                                  "INSERT INTO half_done VALUES (2);\n"))
    emails = rows(lab, "SELECT email FROM users ORDER BY email")
    before = snapshot(lab)
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert res.get("failed") is True
    assert res["msg"].startswith("migration 20260301_half.sql failed in the statement on line 4: ")
    assert 'duplicate key value violates unique constraint "half_done_pkey"' in res["msg"]
    assert res["msg"].endswith("nothing of its batch was applied (%s rolled back with it)" % INCIDENT)
    assert snapshot(lab) == before
    assert rows(lab, "SELECT email FROM users ORDER BY email") == emails
    assert one(lab, "SELECT to_regclass('user_validation_stats') IS NULL") == "t"


def test_check_rehearses_and_changes_nothing(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, *BROKEN_BATCH)
    before = snapshot(lab)
    for check_mode in (False, True):
        res = migrate(lab, tmp_path, check=check_mode, migrations_dir=str(d), action="check")
        assert res.get("failed") is True, res
        assert res["msg"] == (
            'migration 20260303_broken.sql would fail at line 3 (character 36): syntax error at or near '
            '"SELEC"; nothing was changed')
        assert res["failed_migration"] == "20260303_broken.sql" and res["changed"] is False
        assert snapshot(lab) == before
    assert one(lab, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"

    # a good batch: rehearsed whole (the incident file creates what the next one uses), still nothing made
    (d / "20260303_broken.sql").write_text(
        "INSERT INTO user_validation_stats (user_id, points) SELECT id, 1 FROM users "
        "ON CONFLICT (user_id) DO UPDATE SET points = excluded.points;\n")
    res = migrate(lab, tmp_path, migrations_dir=str(d), action="check")
    assert "failed" not in res and res["changed"] is False, res.get("msg")
    assert res["checked"] == [INCIDENT] + [name for name, dummy in BROKEN_BATCH]
    assert res["check_skipped"] == [] and res["pending"] == res["checked"]
    assert res["tracking_table_upgraded"] == ["checksum", "applied_by", "execution_ms", "adopted"]
    assert snapshot(lab) == before

    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert [a["name"] for a in res["applied"]] == res["batches"][0]["files"]
    assert one(lab, "SELECT sum(points) FROM user_validation_stats") == "2"


def test_check_catches_what_a_static_read_can(scratch, tmp_path):
    lab = scratch
    cases = [
        ("20260301_empty.sql", "-- TODO\n",
         "migration 20260301_empty.sql is empty (no SQL statement, 8 bytes)"),
        ("20260301_open.sql", "SELECT 1;\nDO $$ BEGIN PERFORM 1;\n",
         "migration 20260301_open.sql has an unterminated dollar-quoted string $$ starting on line 2"),
    ]
    before = snapshot(lab)
    for index, (name, text, expected) in enumerate(cases):
        d = migrations_dir(tmp_path, (name, text), name="m%d" % index)
        for action in ("check", "apply"):
            res = migrate(lab, tmp_path, migrations_dir=str(d), action=action)
            assert res.get("failed") is True and res["msg"].startswith(expected), (action, res["msg"])
        res = migrate(lab, tmp_path, migrations_dir=str(d), action="status")
        assert "failed" not in res and res["problems"][0].startswith(expected)
        (d / name).write_bytes(b"SELECT '\xe9';\n")
        res = migrate(lab, tmp_path, migrations_dir=str(d), action="check")
        assert res["msg"] == "migration %s is not valid UTF-8 (line 1, byte 8); save it as UTF-8" % name
    assert snapshot(lab) == before


def journal_file(tmp_path):
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(dict(run_id="it", entries=[])))
    path.chmod(0o600)
    return path


def test_no_transaction_file_runs_alone_and_is_journaled(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(
        tmp_path,
        ("20260301_table.sql", "CREATE TABLE nt_orders (id int, total int);\n"),
        ("20260302_index.sql",
         "CREATE INDEX CONCURRENTLY IF NOT EXISTS nt_orders_total ON nt_orders (total);\n"),
        ("20260303_vacuum.sql", "-- dbops: no-transaction\nANALYZE nt_orders;\nVACUUM nt_orders;\n"),
        ("20260304_more.sql", "INSERT INTO nt_orders VALUES (1, 10);\n"),
    )
    expected_batches = [dict(files=[INCIDENT, "20260301_table.sql"], transaction=True),
                         dict(files=["20260302_index.sql"], transaction=False),
                         dict(files=["20260303_vacuum.sql"], transaction=False),
                         dict(files=["20260304_more.sql"], transaction=True)]
    res = migrate(lab, tmp_path, migrations_dir=str(d), action="check")
    assert "failed" not in res, res.get("msg")
    assert res["batches"] == expected_batches
    assert res["checked"] == [INCIDENT, "20260301_table.sql", "20260304_more.sql"]
    assert [(s["name"], s["line"]) for s in res["check_skipped"]] == [
        ("20260302_index.sql", 1), ("20260303_vacuum.sql", 1)]
    assert "CREATE INDEX CONCURRENTLY" in res["check_skipped"][0]["reason"]
    assert one(lab, "SELECT to_regclass('nt_orders') IS NULL") == "t"

    journal = journal_file(tmp_path)
    res = migrate(lab, tmp_path, migrations_dir=str(d), journal=str(journal))
    assert "failed" not in res, res.get("msg")
    assert res["batches"] == expected_batches
    assert [a["name"] for a in res["applied"]] == [n for b in expected_batches for n in b["files"]]
    assert one(lab, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'nt_orders_total'::regclass") == "t"
    entries = json.loads(journal.read_text())["entries"]
    assert [(e["step"], e["applied"], e["adopted"]) for e in entries] == [
        ("migration", b["files"], []) for b in expected_batches]
    assert entries[0]["database"] == lab.it_database and entries[0]["table"] == "public._migrations"
    assert entries[0]["tracking_table_upgraded"] == ["checksum", "applied_by", "execution_ms", "adopted"]
    assert oct(journal.stat().st_mode & 0o777) == "0o600"

    # a no-transaction file failing after its first statement: the line says what stays
    (d / "20260305_two_indexes.sql").write_text(
        "CREATE INDEX CONCURRENTLY nt_orders_id ON nt_orders (id);\n"
        "CREATE INDEX CONCURRENTLY nt_bad ON nt_orders (no_such_column);\n")
    res = migrate(lab, tmp_path, migrations_dir=str(d), journal=str(journal))
    assert res.get("failed") is True and res["changed"] is True
    assert res["msg"].startswith(
        "migration 20260305_two_indexes.sql (run without a transaction: CREATE INDEX CONCURRENTLY) failed "
        "in the statement on line 2: column \"no_such_column\" does not exist; its first 1 statement(s), "
        "up to line 1, stay applied and it was not recorded")
    assert res["partial"] == dict(name="20260305_two_indexes.sql", statements_run=1, statements=2,
                                  up_to_line=1)
    entries = json.loads(journal.read_text())["entries"]
    assert entries[-1]["partial"] == res["partial"] and entries[-1]["applied"] == []
    assert one(lab, "SELECT count(*) FROM _migrations WHERE name = '20260305_two_indexes.sql'") == "0"
    assert one(lab, "SELECT to_regclass('nt_orders_id') IS NOT NULL") == "t"


def test_new_enum_value_is_committed_before_the_files_using_it(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(
        tmp_path,
        ("20260301_type.sql", "CREATE TYPE it_mood AS ENUM ('calm');\n"
                              "ALTER TYPE it_mood ADD VALUE 'busy';\n"),
        ("20260302_use.sql", "CREATE TABLE it_moods (m it_mood DEFAULT 'busy');\nINSERT INTO it_moods VALUES "
                             "(DEFAULT);\n"),
    )
    res = migrate(lab, tmp_path, migrations_dir=str(d), action="check")
    assert "failed" not in res, res.get("msg")
    assert res["checked"] == [INCIDENT, "20260301_type.sql"]
    assert res["check_skipped"][0]["name"] == "20260302_use.sql"
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert "failed" not in res, res.get("msg")
    assert res["batches"] == [dict(files=[INCIDENT, "20260301_type.sql"], transaction=True),
                              dict(files=["20260302_use.sql"], transaction=True)]
    assert one(lab, "SELECT m FROM it_moods") == "busy"


def test_a_session_holding_a_lock_stops_the_run_naming_it(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, ("20260301_users.sql", "ALTER TABLE users ADD COLUMN blocked_col int;\n"))
    (d / INCIDENT).unlink()
    holder = subprocess.Popen(
        ["docker", "exec", "-i", "-e", "PGAPPNAME=it-lock-holder", lab.db, "psql", "-U", lab.info["db_user"],
         "-d", lab.it_database, "-X", "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True)
    try:
        holder.stdin.write("BEGIN;\nLOCK TABLE users IN ACCESS SHARE MODE;\nSELECT pg_sleep(60);\n")
        holder.stdin.flush()
        pid = None
        deadline = time.monotonic() + 20
        while pid is None and time.monotonic() < deadline:
            found = rows(lab, "SELECT pid FROM pg_stat_activity WHERE application_name = 'it-lock-holder' "
                              "AND state = 'active'")
            pid = found[0][0] if found else time.sleep(0.1)
        assert pid, "the lock holder never started"
        before = snapshot(lab)
        for action in ("apply", "check"):
            started = time.monotonic()
            res = migrate(lab, tmp_path, migrations_dir=str(d), action=action, lock_wait_timeout=1.5)
            elapsed = time.monotonic() - started
            assert res.get("failed") is True
            assert "canceling statement due to lock timeout: waited 1.5s (lock_wait_timeout) for a lock " \
                "held by pid %s (application it-lock-holder, user %s, active since " % (
                    pid, lab.info["db_user"]) in res["msg"], res["msg"]
            assert res["msg"].startswith("migration 20260301_users.sql ")
            assert elapsed < 15, elapsed
        assert snapshot(lab) == before
    finally:
        holder.kill()
        holder.wait()


def test_transaction_control_is_refused_before_anything(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, ("20260301_tx.sql", "BEGIN;\nCREATE TABLE tx_table (id int);\nCOMMIT;\n"))
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert res.get("failed") is True
    assert res["msg"].startswith("migration 20260301_tx.sql contains BEGIN on line 1")
    assert one(lab, "SELECT to_regclass('user_validation_stats') IS NULL") == "t"
    assert columns(lab) == ["name", "applied_at"]


def test_baseline_of_hand_applied_incident_migration(scratch, tmp_path):
    lab = scratch
    hand_apply(lab, INCIDENT_FILE)
    # Remove one stats row: a re-execution would put it back (INSERT ... SELECT FROM users).
    rows(lab, "DELETE FROM user_validation_stats WHERE user_id = (SELECT min(user_id::text)::uuid "
              "FROM user_validation_stats)")
    assert one(lab, "SELECT count(*) FROM _migrations") == "0"
    d = migrations_dir(tmp_path, ("20260301_not_applied.sql", "CREATE TABLE never_made (id int);\n"))
    args = dict(migrations_dir=str(d), action="baseline", names=[INCIDENT])

    res = migrate(lab, tmp_path, check=True, **args)
    assert res["changed"] is True and res["would_adopt"] == [INCIDENT] and res["adopted"] == []
    assert one(lab, "SELECT count(*) FROM _migrations") == "0"
    assert columns(lab) == ["name", "applied_at"]

    res = migrate(lab, tmp_path, **args)
    assert res["changed"] is True and res["adopted"] == [INCIDENT] and res["applied"] == []
    assert one(lab, "SELECT count(*) FROM user_validation_stats") == "1"
    row = rows(lab, "SELECT adopted, checksum, execution_ms IS NULL FROM _migrations")
    assert row == [["t", sha256(INCIDENT_FILE), "t"]]

    res = migrate(lab, tmp_path, **args)
    assert res["changed"] is False and res["already_applied"] == [INCIDENT]

    # a migration whose objects do not exist cannot be baselined
    res = migrate(lab, tmp_path, migrations_dir=str(d), action="baseline", names=["20260301_not_applied.sql"])
    assert res.get("failed") is True
    assert res["msg"] == ("cannot baseline 20260301_not_applied.sql: objects missing: table never_made; "
                          "apply it instead")
    assert one(lab, "SELECT count(*) FROM _migrations") == "1"


def test_adopt_existing_during_apply(scratch, tmp_path):
    lab = scratch
    hand_apply(lab, INCIDENT_FILE)
    rows(lab, "DELETE FROM user_validation_stats WHERE user_id = (SELECT min(user_id::text)::uuid "
              "FROM user_validation_stats)")
    d = migrations_dir(tmp_path, ("20260301_new.sql", "CREATE TABLE new_table (id int);\n"))
    args = dict(migrations_dir=str(d), adopt_existing=True)

    res = migrate(lab, tmp_path, check=True, **args)
    assert res["would_adopt"] == [INCIDENT] and res["pending"] == ["20260301_new.sql"]
    assert one(lab, "SELECT count(*) FROM _migrations") == "0"
    assert one(lab, "SELECT to_regclass('new_table') IS NULL") == "t"

    res = migrate(lab, tmp_path, **args)
    assert res["adopted"] == [INCIDENT]
    assert [a["name"] for a in res["applied"]] == ["20260301_new.sql"]
    assert one(lab, "SELECT count(*) FROM user_validation_stats") == "1"
    assert rows(lab, "SELECT name, adopted FROM _migrations ORDER BY name") == [
        [INCIDENT, "t"], ["20260301_new.sql", "f"]]
    assert migrate(lab, tmp_path, **args)["changed"] is False

    # half there: the table exists, its index does not -> refused, naming both
    (d / "20260302_half.sql").write_text(
        "CREATE TABLE half_there (id int);\nCREATE INDEX half_idx ON half_there (id);\n")
    rows(lab, "CREATE TABLE half_there (id int)")
    res = migrate(lab, tmp_path, **args)
    assert res.get("failed") is True
    assert res["msg"].startswith("migration 20260302_half.sql looks partly applied: existing: "
                                 "table half_there; missing: index half_idx")
    assert one(lab, "SELECT count(*) FROM _migrations") == "2"


def test_concurrent_runs_never_both_apply(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(tmp_path, ("20260301_slow.sql",
                                  "CREATE TABLE slow_table (id int);\nSELECT pg_sleep(3);\n"))
    args = dict(migrations_dir=str(d), lock_timeout=60)
    procs = [start_migrate(lab, tmp_path, **args) for dummy in range(2)]
    results = sorted((_parse(_wait(p)) for p in procs), key=lambda r: len(r["applied"]))
    waiter, winner = results
    assert [a["name"] for a in winner["applied"]] == [INCIDENT, "20260301_slow.sql"]
    assert "failed" not in waiter and waiter["changed"] is False and waiter["applied"] == []
    assert waiter["pending"] == [] and waiter["lock_wait_ms"] > 1000
    print("lock wait of the second run: %d ms" % waiter["lock_wait_ms"])
    assert one(lab, "SELECT count(*) FROM _migrations") == "2"

    # lock_timeout=1: the second run gives up with a clear message
    (d / "20260302_slower.sql").write_text("CREATE TABLE slower_table (id int);\nSELECT pg_sleep(5);\n")
    args["lock_timeout"] = 1
    procs = [start_migrate(lab, tmp_path, **args) for dummy in range(2)]
    results = [_parse(_wait(p)) for p in procs]
    failed = [r for r in results if r.get("failed")]
    ok = [r for r in results if not r.get("failed")]
    assert len(ok) == 1 and [a["name"] for a in ok[0]["applied"]] == ["20260302_slower.sql"]
    assert len(failed) == 1
    assert failed[0]["msg"].startswith(
        "another migration run holds the lock on database %s (pid " % lab.it_database)
    assert "application qadhya.dbops" in failed[0]["msg"] and failed[0]["msg"].endswith("retry later")
    assert one(lab, "SELECT count(*) FROM _migrations WHERE name = '20260302_slower.sql'") == "1"
    # the session lock went away with the runs
    assert one(lab, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())") == "0"


def _wait(proc):
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_weird_identifiers_are_quoted(scratch, tmp_path):
    lab = scratch
    table = 'mig"; DROP TABLE users; --'
    schema = "ops schema;"
    weird_file = "20260301_weird 'name'; \"x\".sql"
    d = migrations_dir(tmp_path, (weird_file, 'CREATE TABLE "odd ""t""; x" (id int);\n'))
    args = dict(migrations_dir=str(d), table=table, schema=schema)

    res = migrate(lab, tmp_path, check=True, **args)
    assert res["changed"] is True and res["tracking_table_created"] is True
    assert res["pending"] == [INCIDENT, weird_file]
    assert one(lab, "SELECT count(*) FROM pg_namespace WHERE nspname = %s" % quote_literal(schema)) == "0"

    res = migrate(lab, tmp_path, **args)
    assert res["tracking_table_created"] is True, res.get("msg")
    assert [a["name"] for a in res["applied"]] == [INCIDENT, weird_file]
    assert one(lab, "SELECT count(*) FROM users") == "2"
    assert one(lab, "SELECT to_regclass(%s) IS NOT NULL" % quote_literal('"odd ""t""; x"')) == "t"
    names = rows(lab, 'SELECT name FROM "ops schema;"."mig""; DROP TABLE users; --" ORDER BY name')
    assert [r[0] for r in names] == [INCIDENT, weird_file]
    assert columns(lab, table, schema) == ["name", "applied_at", "checksum", "applied_by",
                                           "execution_ms", "adopted"]
    assert one(lab, "SELECT count(*) FROM _migrations") == "0"  # the app's table untouched
    assert migrate(lab, tmp_path, **args)["changed"] is False


def test_role_passes_the_journal_and_the_lock_wait_timeout(scratch, tmp_path):
    """The apply_migration role through ansible-playbook: one journal entry per committed batch."""
    from labkit import run_playbook, write_inventory

    lab = scratch
    d = migrations_dir(tmp_path, ("20260301_next.sql", "CREATE TABLE role_table (id int);\n"))
    journal = journal_file(tmp_path)
    playbook = tmp_path / "migrate.yml"
    playbook.write_text(json.dumps([{
        "name": "apply_migration role", "hosts": "lab", "gather_facts": False,
        "tasks": [{"name": "Run the role",
                   "ansible.builtin.include_role": {"name": "qadhya.dbops.apply_migration"}}],
    }]))
    hostvars = dict(ansible_connection="local", ansible_python_interpreter=sys.executable,
                    apply_migration_db_container=lab.db, apply_migration_login_user=lab.info["db_user"],
                    apply_migration_login_password=lab.info["db_password"],
                    apply_migration_database=lab.it_database, apply_migration_dir=str(d),
                    apply_migration_journal=str(journal), apply_migration_lock_wait_timeout=2)
    inventory = write_inventory(tmp_path / "inv.json", {"lab-role": hostvars})

    # the pre-check a playbook runs first: the broken file is named, nothing changes
    (d / "20260302_broken.sql").write_text("SELECT 1;\nSELEC 2;\n")
    before = snapshot(lab)
    proc = run_playbook(playbook, inventory, "-e", "apply_migration_action=check")
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert ('migration 20260302_broken.sql would fail at line 2 (character 11): syntax error at or near '
            '"SELEC"; nothing was changed') in proc.stdout
    assert snapshot(lab) == before and json.loads(journal.read_text())["entries"] == []
    (d / "20260302_broken.sql").unlink()
    proc = run_playbook(playbook, inventory, "-e", "apply_migration_action=check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "rehearsed 2 ok" in proc.stdout

    proc = run_playbook(playbook, inventory)
    assert proc.returncode == 0, proc.stdout[-3000:]
    # the yaml callback doubles the quotes of the outcome line
    assert "applied [''%s'', ''20260301_next.sql'']" % INCIDENT in proc.stdout, proc.stdout
    assert lab.info["db_password"] not in proc.stdout + proc.stderr
    entries = json.loads(journal.read_text())["entries"]
    assert [(e["step"], e["applied"]) for e in entries] == [("migration", [INCIDENT, "20260301_next.sql"])]
