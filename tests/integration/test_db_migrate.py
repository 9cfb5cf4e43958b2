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


def test_failing_migration_is_rolled_back(scratch, tmp_path):
    lab = scratch
    d = migrations_dir(
        tmp_path,
        ("20260301_ok.sql", "CREATE TABLE ok_table (id int);\nINSERT INTO ok_table VALUES (1);\n"),
        ("20260302_broken.sql", "CREATE TABLE half_table (id int);\n\nSELEC 1;\n"),
        ("20260303_after.sql", "CREATE TABLE after_table (id int);\n"),
    )
    res = migrate(lab, tmp_path, check=True, migrations_dir=str(d))
    assert res["pending"] == [INCIDENT, "20260301_ok.sql", "20260302_broken.sql", "20260303_after.sql"]
    assert one(lab, "SELECT to_regclass('ok_table') IS NULL") == "t"

    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert res.get("failed") is True
    assert res["msg"].startswith("migration 20260302_broken.sql failed at line 3")
    assert 'syntax error at or near "SELEC"' in res["msg"]
    assert res["failed_migration"] == "20260302_broken.sql"
    assert [a["name"] for a in res["applied"]] == [INCIDENT, "20260301_ok.sql"]
    assert res["pending"] == ["20260302_broken.sql", "20260303_after.sql"]
    assert res["changed"] is True
    assert one(lab, "SELECT to_regclass('half_table') IS NULL") == "t"
    assert one(lab, "SELECT to_regclass('after_table') IS NULL") == "t"
    assert one(lab, "SELECT count(*) FROM ok_table") == "1"
    assert [r[0] for r in rows(lab, "SELECT name FROM _migrations ORDER BY name")] == [
        INCIDENT, "20260301_ok.sql"]

    (d / "20260302_broken.sql").write_text("CREATE TABLE half_table (id int);\n\nSELECT 1;\n")
    res = migrate(lab, tmp_path, migrations_dir=str(d))
    assert [a["name"] for a in res["applied"]] == ["20260302_broken.sql", "20260303_after.sql"]
    assert one(lab, "SELECT to_regclass('after_table') IS NOT NULL") == "t"
    assert migrate(lab, tmp_path, migrations_dir=str(d))["changed"] is False


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
