# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests: no-transaction detection, batching, file problems and failure lines."""

from __future__ import annotations

import time

import psycopg2
import pytest
from sqltext import flatten

from ansible_collections.qadhya.dbops.plugins.module_utils import _migration_runner as r
from ansible_collections.qadhya.dbops.plugins.module_utils import _migrations as m
from ansible_collections.qadhya.dbops.plugins.module_utils import _sql_scan as s


def mf(name, text):
    return m.MigrationFile(name, "/x/" + name, text.encode("utf-8"))


def reason(text):
    found = s.no_transaction(text, s.scan_sql(text))
    return found and found[1]


# -- which files cannot run in a transaction -----------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CREATE INDEX CONCURRENTLY i ON t (x);", "CREATE INDEX CONCURRENTLY"),
        ("create unique index concurrently if not exists i on t (x);", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX (VERBOSE) INDEX CONCURRENTLY i;", "REINDEX CONCURRENTLY"),
        ("REINDEX DATABASE app;", "REINDEX DATABASE"),
        ("VACUUM (ANALYZE) t;", "VACUUM"),
        ("vacuum;", "VACUUM"),
        ("ALTER SYSTEM SET work_mem = '64MB';", "ALTER SYSTEM"),
        ("CREATE DATABASE reports;", "CREATE DATABASE"),
        ("DROP DATABASE IF EXISTS old;", "DROP DATABASE"),
        ("CREATE TABLESPACE fast LOCATION '/ssd';", "CREATE TABLESPACE"),
        ("ALTER TABLE m DETACH PARTITION m_2020 CONCURRENTLY;",
         "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"),
        ("CLUSTER;", "CLUSTER"),
        ("SELECT 1;\n-- dbops: no-transaction\n", "the dbops: no-transaction marker"),
        ("/* DBOPS: No-Transaction (calls dblink) */ SELECT 1;", "the dbops: no-transaction marker"),
    ],
)
def test_no_transaction_statements_are_found(text, expected):
    assert reason(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "CREATE INDEX i ON t (x);",
        "CLUSTER t USING i;",
        "REINDEX TABLE t;",
        "ALTER TABLE m DETACH PARTITION m_2020;",
        "ANALYZE t;",
        "SELECT 'CREATE INDEX CONCURRENTLY i ON t (x)';",
        "-- VACUUM;\n/* ALTER SYSTEM SET x = 1; */ SELECT 1;",
        "DO $$ BEGIN EXECUTE 'VACUUM'; END $$;",
        "SELECT '-- dbops: no-transaction';",
        "SELECT 1; -- not dbops: no-transaction",
        "CREATE TABLE concurrently (vacuum int);",
    ],
)
def test_no_false_no_transaction(text):
    assert reason(text) is None


def test_no_transaction_names_the_line():
    f = mf("0003_idx.sql", "-- index for the dashboard\n\nCREATE INDEX CONCURRENTLY i ON t (x);\n")
    assert f.no_transaction == (3, "CREATE INDEX CONCURRENTLY")
    assert not f.transactional


# -- statements keep their own text --------------------------------------------


def test_statement_text_is_cut_from_the_file():
    text = "CREATE TABLE \"a;b\" (x text DEFAULT 'x;y');\n  -- c\n  VACUUM t ;\nSELECT $f$;$f$"
    sts = s.scan_sql(text)
    assert [st.text(text) for st in sts] == [
        "CREATE TABLE \"a;b\" (x text DEFAULT 'x;y')", "VACUUM t", "SELECT $f$;$f$"]


def test_semicolons_inside_parentheses_do_not_split():
    text = ("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO log VALUES (1); UPDATE c SET n = n + 1);\n"
            "SELECT (1);")
    assert [st.line for st in s.scan_sql(text)] == [1, 2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("SELECT 'open;\nSELECT 2;", (1, "string")),
        ("SELECT 1;\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1;",
         (2, "dollar-quoted string $body$")),
        ('SELECT "x;', (1, "quoted identifier")),
        ("SELECT 1;\n\n/* never closed", (3, "block comment")),
        ("SELECT 1; /* a /* nested */ still open", (1, "block comment")),
    ],
)
def test_unterminated_literals_are_found(text, expected):
    assert s.unterminated(text, s.scan_sql(text)) == expected


# -- problems that stop a run before anything changes ---------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "migration 0002_x.sql is empty (no SQL statement, 0 bytes); add its SQL or remove the file"),
        ("-- only a comment\n/* and this */\n", "migration 0002_x.sql is empty (no SQL statement, 33 bytes)"),
        ("SELECT 1;\nSELECT $$ x",
         "migration 0002_x.sql has an unterminated dollar-quoted string $$ starting on line 2; close it"),
        ("BEGIN;\nSELECT 1;", "migration 0002_x.sql contains BEGIN on line 1"),
    ],
)
def test_file_problems(text, expected):
    assert mf("0002_x.sql", text).problem().startswith(expected)


def test_good_files_have_no_problem():
    assert mf("a.sql", "CREATE INDEX CONCURRENTLY i ON t (x);").problem() is None
    assert mf("b.sql", "SELECT 1").problem() is None


def test_not_utf8_names_line(tmp_path):
    with pytest.raises(m.MigrationError, match=r"x.sql is not valid UTF-8 \(line 2, byte 10\)"):
        m.MigrationFile("x.sql", "/x", b"SELECT 1;\n\xe9")


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0002_b.sql").symlink_to(tmp_path / "gone")
    (tmp_path / "0002_b.sql").unlink()
    (tmp_path / "0002_b.sql").mkdir()  # not a file: ignored
    assert [f.name for f in m.load_migrations(str(tmp_path))] == ["0001_a.sql"]
    locked = tmp_path / "0003_c.sql"
    locked.write_text("SELECT 1;")
    locked.chmod(0)
    try:
        with open(locked, "rb"):
            pytest.skip("running as root: every file is readable")
    except PermissionError:
        pass
    try:
        with pytest.raises(m.MigrationError, match=r"^migration 0003_c.sql cannot be read: Permission"):
            m.load_migrations(str(tmp_path))
    finally:
        locked.chmod(0o644)


# -- batching ---------------------------------------------------------------------


def shape(batches):
    return [(b.names, b.transactional, [f.name for f in b.adopt], b.setup) for b in batches]


def test_transactional_files_share_one_batch():
    files = [mf("1.sql", "SELECT 1;"), mf("2.sql", "SELECT 2;"), mf("3.sql", "SELECT 3;")]
    assert shape(m.plan_batches(files, [], True)) == [(["1.sql", "2.sql", "3.sql"], True, [], True)]


def test_no_transaction_file_splits_the_batches():
    files = [mf("1.sql", "SELECT 1;"), mf("2.sql", "VACUUM;"), mf("3.sql", "SELECT 3;"),
             mf("4.sql", "SELECT 4;"), mf("5.sql", "VACUUM;"), mf("6.sql", "VACUUM;")]
    adopted = [mf("0.sql", "CREATE TABLE t (id int);")]
    assert shape(m.plan_batches(files, adopted, False)) == [
        (["1.sql"], True, ["0.sql"], False),
        (["2.sql"], False, [], False),
        (["3.sql", "4.sql"], True, [], False),
        (["5.sql"], False, [], False),
        (["6.sql"], False, [], False),
    ]


def test_table_work_before_a_leading_no_transaction_file_gets_its_own_transaction():
    files = [mf("1.sql", "VACUUM;"), mf("2.sql", "SELECT 2;")]
    assert shape(m.plan_batches(files, [], True)) == [
        ([], True, [], True), (["1.sql"], False, [], False), (["2.sql"], True, [], False)]
    assert shape(m.plan_batches(files, [], False)) == [
        (["1.sql"], False, [], False), (["2.sql"], True, [], False)]


def test_a_new_enum_value_ends_its_batch():
    files = [mf("1.sql", "CREATE TYPE mood AS ENUM ('a');"), mf("2.sql", "ALTER TYPE mood ADD VALUE 'b';"),
             mf("3.sql", "SELECT 'b'::mood;"), mf("4.sql", "SELECT 4;")]
    assert files[1].ends_batch == (1, "ALTER TYPE ... ADD VALUE")
    assert files[0].ends_batch is None and files[0].transactional
    assert shape(m.plan_batches(files)) == [
        (["1.sql", "2.sql"], True, [], False), (["3.sql", "4.sql"], True, [], False)]


def test_rehearsal_stops_where_a_commit_is_needed_and_skips_no_transaction_files():
    conn = FakeConn()
    run = runner(conn)
    files = [mf("1.sql", "SELECT 1;"), mf("2.sql", "VACUUM;"), mf("3.sql", "ALTER TYPE mood ADD VALUE 'b';"),
             mf("4.sql", "SELECT 'b'::mood;")]
    run.rehearse(m.plan_batches(files))
    assert run.result["checked"] == ["1.sql", "3.sql"]
    assert [(x["name"], x["line"]) for x in run.result["check_skipped"]] == [("2.sql", 1), ("4.sql", None)]
    assert run.result["check_skipped"][1]["reason"] == (
        "comes after 3.sql, whose ALTER TYPE ... ADD VALUE on line 1 must be committed first; not rehearsed")
    assert conn.log.count("BEGIN") == 1 and conn.log[-1] == "ROLLBACK"


def test_nothing_to_do_is_no_batch_and_adoption_alone_is_one():
    assert m.plan_batches([], [], False) == []
    assert shape(m.plan_batches([], [mf("0.sql", "SELECT 1;")], True)) == [([], True, ["0.sql"], True)]


# -- failure lines ------------------------------------------------------------------


class Diag:
    def __init__(self, pos=None, primary=None, context=None):
        self.statement_position = pos
        self.message_primary = primary
        self.context = context


class PgError(psycopg2.Error):
    """A psycopg2 error as the server sends it (its attributes are read-only in psycopg2)."""

    def __init__(self, primary, pos=None, pgcode="42601", context=None):
        super().__init__("ERROR:  " + primary)
        self._fake = dict(pgerror="ERROR:  %s\n" % primary, pgcode=pgcode, diag=Diag(pos, primary, context))

    pgerror = property(lambda self: self._fake["pgerror"])
    pgcode = property(lambda self: self._fake["pgcode"])
    diag = property(lambda self: self._fake["diag"])


def test_batch_failure_names_file_line_error_and_the_rolled_back_files():
    a, b, c = mf("1_a.sql", "SELECT 1;"), mf("2_b.sql", "SELECT 2;"), mf("3_c.sql", "SELECT 1;\nSELEC 2;\n")
    batch = m.Batch([a, b, c])
    exc = PgError('syntax error at or near "SELEC"', pos=str(c.text.index("SELEC ") + 1))
    line = m.batch_failure_message(batch, c, m.error_location(c.text, exc), m.pg_error_line(exc))
    assert line == ('migration 3_c.sql failed at line 2 (character 11): syntax error at or near "SELEC"; '
                    "nothing of its batch was applied (1_a.sql, 2_b.sql rolled back with it)")
    alone = m.batch_failure_message(m.Batch([c]), c, "", "boom")
    assert alone == "migration 3_c.sql failed: boom; nothing of this file was applied"
    rehearsed = m.batch_failure_message(batch, c, " at line 2 (character 11)", "boom", rehearsal=True,
                                        skipped=["2x_idx.sql"])
    assert rehearsed == ("migration 3_c.sql would fail at line 2 (character 11): boom (rehearsed without "
                         "2x_idx.sql, which cannot run in a transaction); nothing was changed")


def test_error_location_of_one_statement_counts_from_the_file():
    f = mf("x.sql", "-- dbops: no-transaction\nSELECT 1;\nVACUUM nope_table ;\n")
    st = f.statements[1]
    exc = PgError('relation "nope_table" does not exist', pos="8")
    assert m.error_location(f.text, exc, offset=st.start) == " at line 3 (character %d)" % (st.start + 8)


def test_pg_error_line_adds_function_context():
    exc = PgError("division by zero", context="SQL statement \"SELECT 1/0\"\nPL/pgSQL function f() line 3")
    assert m.pg_error_line(exc) == ('division by zero (SQL statement "SELECT 1/0", '
                                    "PL/pgSQL function f() line 3)")


def test_partial_failure_says_what_stays_applied():
    f = mf("4_idx.sql", "CREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);\n")
    line = m.partial_failure_message(f, "boom", " at line 2 (character 40)", f.statements[:1],
                                     "CREATE INDEX CONCURRENTLY")
    assert line == ("migration 4_idx.sql (run without a transaction: CREATE INDEX CONCURRENTLY) failed at "
                    "line 2 (character 40): boom; its first 1 statement(s), up to line 1, stay applied and "
                    "it was not recorded; finish or undo them by hand, then rerun (a failed CREATE INDEX "
                    "CONCURRENTLY leaves an INVALID index: drop it before rerunning)")
    assert m.partial_failure_message(f, "boom", "", []).endswith("boom; nothing of it was applied")


# -- the runner's transaction, against a fake connection ------------------------------


class FakeCursor:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def execute(self, query, params=None):
        text = flatten(query)
        self.conn.log.append(text)
        if self.conn.fail_on and self.conn.fail_on in text:
            raise self.conn.error

    def fetchall(self):
        return []


class FakeConn:
    closed = False

    def __init__(self, fail_on=None, error=None):
        self.log = []
        self.fail_on = fail_on
        self.error = error

    def cursor(self):
        return FakeCursor(self)

    def get_backend_pid(self):
        return 4242

    def get_dsn_parameters(self):
        return {"dbname": "appdb"}

    def set_client_encoding(self, enc):
        self.log.append("encoding " + enc)

    def get_transaction_status(self):
        return 0


def runner(conn, journal=None):
    run = r.MigrationRunner(conn, "public", "_migrations", "me@host", journal=journal)
    run.columns = [c for c, dummy in m.TRACKING_COLUMNS]
    conn.log.clear()
    return run


def test_a_batch_runs_in_one_transaction_with_its_records_and_one_journal_entry():
    conn = FakeConn()
    entries = []
    run = runner(conn, journal=lambda step, **kw: entries.append(dict(kw, step=step)))
    batch = m.Batch([mf("1.sql", "CREATE TABLE a (id int);"), mf("2.sql", "CREATE TABLE b (id int);")],
                    adopt=[mf("0.sql", "CREATE TABLE z (id int);")])
    run.run_transaction(batch)
    statements = [q for q in conn.log if not q.startswith(("SELECT pg_catalog.set_config", "RESET"))]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    assert statements.count("BEGIN") == 1 and statements.count("COMMIT") == 1
    assert [q for q in statements if q.startswith("CREATE")] == ["CREATE TABLE a (id int)",
                                                                 "CREATE TABLE b (id int)"]
    assert sum(q.startswith('INSERT INTO "public"."_migrations"') for q in statements) == 3
    assert entries == [dict(step="migration", database="appdb", table="public._migrations",
                            applied=["1.sql", "2.sql"], adopted=["0.sql"])]
    assert [a["name"] for a in run.result["applied"]] == ["1.sql", "2.sql"]


def test_a_rehearsal_always_rolls_back_and_journals_nothing():
    conn = FakeConn()
    entries = []
    run = runner(conn, journal=lambda step, **kw: entries.append(kw))
    run.run_transaction(m.Batch([mf("1.sql", "CREATE TABLE a (id int);")]), rehearse=True)
    assert conn.log[0] == "BEGIN" and conn.log[-1] == "ROLLBACK" and "COMMIT" not in conn.log
    assert any("statement_timeout" in q for q in conn.log)
    assert entries == [] and run.result["applied"] == [] and run.result["changed"] is False


def test_a_lock_timeout_names_the_blocking_session():
    error = PgError("canceling statement due to lock timeout", pgcode="55P03")
    conn = FakeConn(fail_on="ALTER TABLE users", error=error)
    run = runner(conn)
    run.watch.blockers = [(7001, "psql", "app", "idle in transaction", "2026-12-01 20:00:00+00")]
    run.watch.seen_at = time.monotonic()
    with pytest.raises(m.MigrationError) as err:
        run.run_transaction(m.Batch([mf("1.sql", "ALTER TABLE users ADD c int;")]))
    assert err.value.msg == (
        "migration 1.sql failed in the statement on line 1: canceling statement due to lock timeout: "
        "waited 5s (lock_wait_timeout) for a lock held by pid 7001 (application psql, user app, "
        "idle in transaction since 2026-12-01 20:00:00+00); nothing of this file was applied")
    assert run.result["applied"] == []


def test_a_stale_sighting_is_not_blamed():
    error = PgError("canceling statement due to lock timeout", pgcode="55P03")
    run = runner(FakeConn(fail_on="ALTER TABLE", error=error))
    run.watch.blockers = [(7001, "psql", "app", "idle", "2026-12-01 20:00:00+00")]
    run.watch.seen_at = time.monotonic() - 60
    with pytest.raises(m.MigrationError, match="held by a session the watch did not see in time"):
        run.run_transaction(m.Batch([mf("1.sql", "ALTER TABLE users ADD c int;")]))


def test_a_record_that_fails_rolls_back_the_batch():
    error = PgError('permission denied for table _migrations', pgcode="42501")
    conn = FakeConn(fail_on='INSERT INTO "public"."_migrations"', error=error)
    run = runner(conn)
    with pytest.raises(m.MigrationError) as err:
        run.run_transaction(m.Batch([mf("1.sql", "SELECT 1;")]))
    assert err.value.msg == ("recording migration 1.sql in public._migrations failed: permission denied for "
                             "table _migrations; nothing of its batch was applied")
