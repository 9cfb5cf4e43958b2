# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the migration planning logic (no database)."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _migrations as m
from ansible_collections.qadhya.dbops.plugins.module_utils import _sql_scan as s

REPO = Path(__file__).resolve().parents[4]


def mf(name, text):
    return m.MigrationFile(name, "/x/" + name, text.encode("utf-8"))


def objects(text):
    return [str(o) for o in s.created_objects(s.scan_sql(text))]


# -- files ----------------------------------------------------------------------


def test_files_are_listed_in_lexical_order_and_filtered(tmp_path):
    for name in ("20260213_b.sql", "2026_a.sql", "10_x.sql", "9_y.sql", "notes.txt", ".hidden.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    (tmp_path / "dir.sql").mkdir()
    assert m.list_migration_names(str(tmp_path)) == [
        "10_x.sql",
        "20260213_b.sql",
        "2026_a.sql",
        "9_y.sql",
    ]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(m.MigrationError, match="migrations_dir .*does not exist"):
        m.list_migration_names(str(tmp_path / "nope"))


def test_sha256_is_of_the_raw_bytes(tmp_path):
    data = "\ufeffCREATE TABLE t (id int);\r\n".encode()
    (tmp_path / "a.sql").write_bytes(data)
    loaded = m.load_migrations(str(tmp_path))
    assert loaded[0].sha256 == hashlib.sha256(data).hexdigest()
    assert loaded[0].text.startswith("CREATE")  # BOM is not SQL
    assert m.sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_non_utf8_file_is_refused():
    with pytest.raises(m.MigrationError, match="not valid UTF-8"):
        m.MigrationFile("a.sql", "/x/a.sql", b"SELECT '\xe9';")


# -- lexer and transaction control --------------------------------------------


def test_statements_split_on_top_level_semicolons_only():
    text = (
        "SELECT 'a;b';\n"
        '-- comment; here\nCREATE TABLE "x;y" (id int);\n'
        "/* block; /* nested; */ still; */ SELECT $$ ; $$;\n"
        "SELECT E'it\\'s;';\n"
        "SELECT 1"
    )
    sts = s.scan_sql(text)
    assert [st.line for st in sts] == [1, 3, 4, 5, 6]
    assert sts[1].tokens[2].value == "x;y"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;", [(1, "BEGIN"), (3, "COMMIT")]),
        ("create table t (id int);\nstart transaction;", [(2, "START TRANSACTION")]),
        ("SELECT 1;\nrollback;", [(2, "ROLLBACK")]),
        ("END;", [(1, "END")]),
        ("abort;", [(1, "ABORT")]),
        ("PREPARE TRANSACTION 'x';", [(1, "PREPARE TRANSACTION")]),
        ("COMMIT PREPARED 'x';", [(1, "COMMIT PREPARED")]),
        ("\\i other.sql\nSELECT 1;", [(1, "psql meta-command \\i")]),
        ("SELECT 1 \\gset\n", [(1, "psql meta-command \\gset")]),
    ],
)
def test_transaction_control_is_detected(text, expected):
    assert s.transaction_control(s.scan_sql(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        # plpgsql bodies have BEGIN/END and even COMMIT (procedures): not top level
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; END; $$;",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $body$ BEGIN COMMIT; END $body$;",
        "DO $$ BEGIN RAISE NOTICE 'x'; END $$;",
        "SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a; RELEASE SAVEPOINT a;",
        "SELECT 'BEGIN; COMMIT;';\n-- COMMIT;\n/* ROLLBACK; */",
        "CREATE TABLE begin_log (commit text);",
        # SQL-standard body: the ; inside BEGIN ATOMIC ... END do not end the statement
        "CREATE FUNCTION g(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC "
        "SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END; SELECT 2; END;\nSELECT 3;",
        "SELECT E'back\\\\slash';",
    ],
)
def test_no_false_transaction_control(text):
    assert s.transaction_control(s.scan_sql(text)) == []


def test_begin_atomic_is_one_statement():
    text = "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3;"
    assert len(s.scan_sql(text)) == 2


def test_refuse_transaction_control_names_file_and_line():
    bad = mf("0002_bad.sql", "CREATE TABLE t (id int);\n\nCOMMIT;\n")
    with pytest.raises(m.MigrationError, match=r"0002_bad.sql contains COMMIT on line 3") as err:
        m.refuse_problems([mf("0001_ok.sql", "SELECT 1;"), bad])
    assert err.value.details["failed"] == "0002_bad.sql"


# -- CREATE parser ----------------------------------------------------------------


def test_parser_finds_tables_indexes_views_functions():
    text = """
    CREATE TABLE users (id int);
    create table if not exists Public.Stats (id int);
    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON users (id);
    CREATE INDEX idx_b ON app.t USING btree (x);
    CREATE INDEX ON users (id);
    CREATE OR REPLACE VIEW v_x AS SELECT 1;
    CREATE MATERIALIZED VIEW IF NOT EXISTS mv AS SELECT 1;
    CREATE OR REPLACE FUNCTION app.f(a int DEFAULT 1) RETURNS int LANGUAGE sql AS 'SELECT 1';
    CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$;
    CREATE SEQUENCE seq_1;
    CREATE TYPE mood AS ENUM ('a', 'b');
    CREATE DOMAIN posint AS int CHECK (VALUE > 0);
    CREATE TRIGGER trg BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION f();
    CREATE SCHEMA IF NOT EXISTS app;
    CREATE UNLOGGED TABLE u (id int);
    CREATE RECURSIVE VIEW r (n) AS SELECT 1;
    """
    assert objects(text) == [
        "table users",
        "table public.stats",
        "index idx_a",
        "index app.idx_b",
        "view v_x",
        "materialized view mv",
        "function app.f",
        "procedure p",
        "sequence seq_1",
        "type mood",
        "type posint",
        "trigger trg",
        "schema app",
        "table u",
        "view r",
    ]


def test_parser_handles_quoted_and_unicode_names():
    text = (
        'CREATE TABLE "My Table" (id int);\n'
        'CREATE TABLE "s""q"."t;x" (id int);\n'
        "CREATE TABLE données (id int);\n"
        'CREATE INDEX "Idx" ON "My Table" (id);\n'
    )
    got = s.created_objects(s.scan_sql(text))
    assert [(o.kind, o.schema, o.name) for o in got] == [
        ("table", None, "My Table"),
        ("table", 's"q', "t;x"),
        ("table", None, "données"),
        ("index", None, "Idx"),
    ]


def test_parser_marks_or_replace_and_trigger_table():
    got = s.created_objects(
        s.scan_sql(
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql;\n"
            "CREATE CONSTRAINT TRIGGER t AFTER INSERT ON app.\"Orders\" FOR EACH ROW EXECUTE FUNCTION f();"
        )
    )
    assert got[0].replace is True
    assert got[1].kind == "trigger" and got[1].on == ("app", "Orders")


def test_comments_strings_and_function_bodies_make_no_objects():
    text = """
    -- CREATE TABLE in_comment (id int);
    /* CREATE TABLE in_block (id int); /* nested CREATE VIEW v AS SELECT 1; */ */
    SELECT 'CREATE TABLE in_string (id int);';
    CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
      CREATE TABLE in_body (id int);
      EXECUTE 'CREATE INDEX in_exec ON t (x)';
    END;
    $$;
    CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $fn$
    BEGIN CREATE TABLE in_tagged_body (id int); END $fn$;
    DO $$ BEGIN CREATE TABLE in_do (id int); END $$;
    COMMENT ON TABLE t IS 'CREATE TABLE nope (id int)';
    CREATE TEMP TABLE tmp_x (id int);
    """
    assert objects(text) == ["function f", "function g"]


def test_incident_migration_objects():
    path = REPO / "migrations" / "20260213_kb_validation_gamification.sql"
    got = objects(path.read_text(encoding="utf-8"))
    assert got == [
        "table user_validation_stats",
        "index idx_user_validation_stats_points",
        "index idx_user_validation_stats_documents",
        "index idx_user_validation_stats_last_validation",
        "function get_user_badge",
        "view v_user_validation_badges",
        "function get_user_leaderboard_position",
    ]


# -- planning ---------------------------------------------------------------------

WHEN = datetime.datetime(2026, 2, 13, 10, 0, tzinfo=datetime.UTC)


def test_records_match_by_name_or_stem_and_report_missing_files():
    files = [mf("001_a.sql", "SELECT 1;"), mf("002_b.sql", "SELECT 2;")]
    records = [m.Record("001_a"), m.Record("000_gone.sql"), m.Record("001_a")]
    applied, missing = m.match_records(files, records)
    assert list(applied) == ["001_a.sql"]
    assert missing == ["000_gone.sql"]


def test_changed_checksum_is_reported_with_date_and_both_hashes():
    a = mf("20260213_x.sql", "SELECT 1;")
    b = mf("20260214_y.sql", "SELECT 2;")
    applied = {
        a.name: m.Record(a.name, "0" * 64, WHEN),
        b.name: m.Record(b.name, None, WHEN),
    }
    untracked, mismatches = m.checksum_problems([a, b], applied)
    assert untracked == ["20260214_y.sql"]
    assert len(mismatches) == 1
    msg = m.mismatch_message(mismatches)
    assert msg.startswith(
        "migration 20260213_x.sql was applied on 2026-02-13 10:00:00+00:00 with sha256 000000000000"
    )
    assert a.sha256[:12] in msg
    assert msg.endswith("restore the original file or add a new migration")


def test_matching_checksum_and_foreign_checksum_formats():
    a = mf("a.sql", "SELECT 1;")
    ok = {a.name: m.Record(a.name, "sha256:" + a.sha256.upper())}
    assert m.checksum_problems([a], ok) == ([], [])
    md5 = {a.name: m.Record(a.name, "d41d8cd98f00b204e9800998ecf8427e")}
    assert m.checksum_problems([a], md5) == (["a.sql"], [])


def test_pending_selection_with_names_and_target():
    files = [mf(n, "SELECT 1;") for n in ("001.sql", "002.sql", "003.sql", "004.sql")]
    applied = {"002.sql": m.Record("002.sql")}

    def names(chosen):
        return [f.name for f in chosen]

    assert names(m.select_files(files, applied, [], None)) == ["001.sql", "003.sql", "004.sql"]
    assert names(m.select_files(files, applied, [], "003.sql")) == ["001.sql", "003.sql"]
    assert names(m.select_files(files, applied, ["004.sql", "002.sql"], None)) == ["004.sql"]
    with pytest.raises(m.MigrationError, match="names: 009.sql is not"):
        m.select_files(files, applied, ["009.sql"], None)
    with pytest.raises(m.MigrationError, match="target 009.sql is not"):
        m.select_files(files, applied, [], "009.sql")
    with pytest.raises(m.MigrationError, match="baseline needs names"):
        m.select_files(files, applied, [], None, "baseline")


def adopt(text, present):
    f = mf("x.sql", text)
    return m.adopt_decision(f, {o: o.name in present for o in f.objects})


def test_adopt_decision():
    text = (
        "CREATE TABLE s (id int);\nCREATE INDEX i ON s (id);\n"
        "CREATE OR REPLACE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql;\n"
        "INSERT INTO s VALUES (1);"
    )
    assert adopt(text, {"s", "i", "f"}) == "adopt"
    assert adopt(text, set()) == "apply"
    # an older f does not make the file applied
    assert adopt(text, {"f"}) == "apply"
    with pytest.raises(m.MigrationError, match=r"existing: table s; missing: index i, function f"):
        adopt(text, {"s"})
    # only data, or only CREATE OR REPLACE: never adopted
    assert adopt("INSERT INTO s VALUES (2);", set()) == "apply"
    assert adopt("CREATE OR REPLACE VIEW v AS SELECT 1;", {"v"}) == "apply"


def test_baseline_refusal_lists_missing_objects():
    f = mf("20260213_k.sql", "CREATE TABLE user_validation_stats (id int);\nCREATE VIEW v AS SELECT 1;")
    exists = {o: o.kind == "view" for o in f.objects}
    assert m.baseline_refusal(f, exists) == (
        "cannot baseline 20260213_k.sql: objects missing: table user_validation_stats; apply it instead"
    )
    assert m.baseline_refusal(f, dict.fromkeys(f.objects, True)) is None


def test_lock_key_is_stable_signed_64bit_and_per_table():
    k = m.lock_key("public", "_migrations")
    assert k == m.lock_key("public", "_migrations")
    assert -(2**63) <= k < 2**63
    assert k != m.lock_key("public", "other")
    assert k != m.lock_key("app", "_migrations")


class FakeDiag:
    def __init__(self, pos):
        self.statement_position = pos


class FakePgError(Exception):
    def __init__(self, pos, pgerror):
        super().__init__(pgerror)
        self.diag = FakeDiag(pos)
        self.pgerror = pgerror


def test_error_location_maps_position_to_line():
    text = "CREATE TABLE a (id int);\n-- x\nSELEC 1;\n"
    pos = text.index("SELEC") + 1  # PostgreSQL positions are 1-based
    exc = FakePgError(str(pos), 'ERROR:  syntax error at or near "SELEC"\nLINE 3: SELEC 1;\n')
    assert m.error_location(text, exc) == " at line 3 (character %d)" % pos
    assert m.pg_error_line(exc) == 'syntax error at or near "SELEC"'
    assert m.error_location(text, FakePgError(None, "x")) == ""
