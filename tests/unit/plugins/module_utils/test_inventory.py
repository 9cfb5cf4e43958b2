# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the pure logic of db_info (env file, table names, decisions)."""

from __future__ import annotations


import pytest


import psycopg2
from sqltext import flatten

from ansible_collections.qadhya.dbops.plugins.module_utils import _inventory as inv

# --------------------------------------------------------------------------
# env file
# --------------------------------------------------------------------------

ENV_TEXT = """\ufeff# app settings
export DB_NAME=qadhya
DB_USER = 'moncabinet'
DB_HOST="postgres"   # the compose service
DB_PORT=5432 # inline comment
DB_PASSWORD='s3cr#t pw'
API_KEY=abc123
JWT_SECRET="x y"
SESSION_TOKEN=tok
DATABASE_URL=postgres://app:hunter2@db:5432/qadhya
APP_TITLE="Qadhya – \\"Assistant\\" juridique"
HASH=abc#def
EMPTY=
not a line
1BAD=x
DB_NAME=qadhya_final
"""


def test_env_parsing_quotes_export_comments():
    env = inv.parse_env_text(ENV_TEXT)
    assert env["DB_NAME"] == "qadhya_final"  # later lines win
    assert env["DB_USER"] == "moncabinet"
    assert env["DB_HOST"] == "postgres"
    assert env["DB_PORT"] == "5432"
    assert env["DB_PASSWORD"] == "s3cr#t pw"  # '#' inside quotes is not a comment
    assert env["APP_TITLE"] == 'Qadhya – "Assistant" juridique'
    assert env["HASH"] == "abc#def"  # '#' without a space before it is data
    assert env["EMPTY"] == ""
    assert "1BAD" not in env
    assert "not a line" not in env


def test_env_export_with_tabs_and_crlf():
    env = inv.parse_env_text("export\tDB_NAME=a\r\nDB_USER='b'\r\n")
    assert env == {"DB_NAME": "a", "DB_USER": "b"}


def test_env_unterminated_quote_kept_verbatim():
    assert inv.parse_env_text('A="abc\n')["A"] == '"abc'


def test_secrets_are_hidden():
    public, secrets = inv.split_env(inv.parse_env_text(ENV_TEXT))
    assert secrets == ["API_KEY", "DB_PASSWORD", "JWT_SECRET", "SESSION_TOKEN"]
    assert "DB_PASSWORD" not in public
    text = repr(public)
    for value in ("s3cr#t pw", "abc123", "x y", "tok", "hunter2"):
        assert value not in text
    assert public["DATABASE_URL"] == "postgres://app:********@db:5432/qadhya"
    assert public["DB_NAME"] == "qadhya_final"


@pytest.mark.parametrize("key", ["DB_PASSWORD", "db_pass", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY",
                                 "GITHUB_TOKEN", "PRIVATE_PEM", "DB_PWD", "GOOGLE_CREDENTIALS"])
def test_secret_key_names(key):
    assert inv.is_secret_key(key)


@pytest.mark.parametrize("key", ["DB_NAME", "DB_USER", "DB_HOST", "DB_PORT", "NODE_ENV"])
def test_plain_key_names(key):
    assert not inv.is_secret_key(key)


def test_read_env_file_errors(tmp_path):
    with pytest.raises(inv.InventoryError, match="does not exist; check env_file"):
        inv.read_env_file(str(tmp_path / "nope.env"))
    with pytest.raises(inv.InventoryError, match="cannot read env file"):
        inv.read_env_file(str(tmp_path))  # a directory
    bad = tmp_path / "latin1.env"
    bad.write_bytes(b"DB_NAME=caf\xe9\n")
    with pytest.raises(inv.InventoryError, match="not valid UTF-8"):
        inv.read_env_file(str(bad))
    good = tmp_path / "ok.env"
    good.write_text("DB_NAME=قاعدة\n", encoding="utf-8")
    assert inv.read_env_file(str(good)) == {"DB_NAME": "قاعدة"}


# --------------------------------------------------------------------------
# table names
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("knowledge_base", ("public", "knowledge_base")),
        ("audit.events", ("audit", "events")),
        ('"x.y"', ("public", "x.y")),
        ('"my schema"."we""ird"', ("my schema", 'we"ird')),
        ("a.b.c", ("a", "b.c")),
        ("  padded  ", ("public", "padded")),
        ("données.تقارير", ("données", "تقارير")),
    ],
)
def test_split_qualified(name, expected):
    assert inv.split_qualified(name) == expected


@pytest.mark.parametrize("name", ["", "  ", ".t", "s.", '"open'])
def test_split_qualified_rejects(name):
    with pytest.raises(ValueError):
        inv.split_qualified(name)


def test_table_key():
    assert inv.table_key("public", "users") == "users"
    assert inv.table_key("audit", "events") == "audit.events"


# --------------------------------------------------------------------------
# counting method
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, reltuples, expected",
    [
        ("exact", 5e9, "exact"),
        ("estimate", 10.0, "estimate"),
        ("estimate", 0.0, "estimate"),
        ("estimate", -1.0, "exact"),  # never analyzed: no estimate exists
        ("auto", 100.0, "exact"),
        ("auto", 10_000_000.0, "exact"),  # threshold itself is still exact
        ("auto", 10_000_001.0, "estimate"),
        ("auto", -1.0, "exact"),
    ],
)
def test_choose_method(mode, reltuples, expected):
    assert inv.choose_method(mode, reltuples, 10_000_000) == expected


# --------------------------------------------------------------------------
# data decisions
# --------------------------------------------------------------------------


def _db(**rows):
    tables = {key: {"rows": n, "method": "exact"} for key, n in rows.items()}
    return {"tables": tables, "has_data": inv.decide_has_data(tables, []), "missing_tables": []}


def test_has_data_ignores_migrations_and_extension_tables():
    assert not inv.decide_has_data({"_migrations": {"rows": 4}}, [])
    assert not inv.decide_has_data({"spatial_ref_sys": {"rows": 8500, "extension": True}}, [])
    assert inv.decide_has_data({"users": {"rows": 1}}, [])
    # with data_tables, only those count
    tables = {"users": {"rows": 2}, "knowledge_base": {"rows": 0}}
    assert not inv.decide_has_data(tables, ["knowledge_base"])
    assert inv.decide_has_data(tables, ["knowledge_base", "users"])
    assert not inv.decide_has_data(tables, ["absent_table"])


def test_decide_incident_mismatch():
    dbs = {
        "moncabinet": _db(knowledge_base=580, users=2, web_sources=6, ai_usage_logs=0, _migrations=0),
        "qadhya": _db(knowledge_base=0, ai_usage_logs=0, _migrations=0),
        "postgres": _db(),
    }
    dbs["moncabinet"]["missing_tables"] = ["user_validation_stats"]
    dbs["postgres"]["missing_tables"] = ["user_validation_stats"]
    out = inv.decide(dbs, "qadhya", ["moncabinet", "postgres", "qadhya"])
    assert out["data_databases"] == ["moncabinet"]
    assert out["configured_exists"] is True
    assert out["mismatch"] is True
    assert out["summary"].startswith(
        "data in 'moncabinet' (580 rows in knowledge_base, 6 in web_sources, 2 in users); "
        "app configured for 'qadhya' which is empty — they disagree"
    )
    assert "missing in 'moncabinet': user_validation_stats" in out["summary"]
    assert "'postgres'" not in out["summary"]


def test_decide_agree():
    dbs = {"qadhya": _db(knowledge_base=580), "postgres": _db()}
    out = inv.decide(dbs, "qadhya", ["postgres", "qadhya"])
    assert out["mismatch"] is False
    assert out["data_databases"] == ["qadhya"]
    assert out["summary"].endswith("app configured for 'qadhya' — they agree")


def test_decide_no_data_anywhere():
    dbs = {"a": _db(t=0), "b": _db()}
    out = inv.decide(dbs, "a", ["a", "b"])
    assert out["data_databases"] == []
    assert out["mismatch"] is False  # nothing better exists elsewhere
    assert out["summary"].startswith("no database holds data (checked: a, b)")


def test_decide_two_databases_with_data():
    dbs = {"a": _db(t=5), "b": _db(t=7, u=1, v=1, w=1)}
    out = inv.decide(dbs, "a", ["a", "b"])
    assert out["data_databases"] == ["a", "b"]
    assert out["mismatch"] is False
    assert "'b' (7 rows in t, 1 in u, 1 in v, 1 more table(s))" in out["summary"]
    assert "more than one database holds data" in out["summary"]
    # configured one of neither
    out = inv.decide(dbs, "c", ["a", "b"])
    assert out["mismatch"] is True
    assert out["configured_exists"] is False
    assert "app configured for 'c' which does not exist — they disagree" in out["summary"]


def test_decide_without_env_file():
    out = inv.decide({"a": _db(t=1)}, None, ["a"], env_given=False)
    assert out["mismatch"] is False
    assert out["configured_exists"] is False
    assert out["summary"] == "data in 'a' (1 rows in t); no env file given"


def test_select_databases():
    server = {
        "a": {"allow_connections": True, "is_template": False},
        "b": {"allow_connections": False, "is_template": False},
        "template1": {"allow_connections": True, "is_template": True},
        "c": {"allow_connections": True, "is_template": False},
    }
    assert inv.select_databases(server, []) == ["a", "c"]
    assert inv.select_databases(server, ["c", "a", "c"]) == ["c", "a"]
    with pytest.raises(inv.InventoryError) as err:
        inv.select_databases(server, ["x"])
    assert str(err.value) == "database 'x' does not exist on server; existing: a, b, c"
    with pytest.raises(inv.InventoryError, match="does not accept connections"):
        inv.select_databases(server, ["b"])


# --------------------------------------------------------------------------
# connections
# --------------------------------------------------------------------------

PARAMS = dict(login_port=5432, login_user="moncabinet", login_password="pw-do-not-show",
              connect_timeout=3)


def test_connector_auth_failure_is_one_clear_line(monkeypatch):
    def refuse(**kwargs):
        raise psycopg2.OperationalError(
            'connection to server at "172.18.0.2", port 5432 failed: FATAL:  password '
            'authentication failed for user "moncabinet"\n'
        )

    monkeypatch.setattr(inv.psycopg2, "connect", refuse)
    with pytest.raises(inv.InventoryError) as err:
        inv.Connector(PARAMS, "172.18.0.2").open("postgres")
    msg = str(err.value)
    assert msg == (
        "password authentication failed for user 'moncabinet' on 172.18.0.2:5432; "
        "check login_password / DB_PASSWORD in the env file"
    )
    assert "pw-do-not-show" not in msg


def test_connector_other_failure_names_database(monkeypatch):
    def refuse(**kwargs):
        raise psycopg2.OperationalError("FATAL:  database \"x\" does not exist\nmore")

    monkeypatch.setattr(inv.psycopg2, "connect", refuse)
    with pytest.raises(inv.InventoryError) as err:
        inv.Connector(PARAMS, "h").open("x")
    assert str(err.value) == (
        "cannot connect to database 'x' on h:5432 as 'moncabinet': FATAL:  database \"x\" does not exist; "
        "check the host, the credentials and that the database exists"
    )


# --------------------------------------------------------------------------
# one database, fake connection: one count statement, methods reported
# --------------------------------------------------------------------------


class FakeCursor:
    def __init__(self, relations, counts, migrations=()):
        self.relations = relations
        self.counts = counts
        self.migrations = list(migrations)
        self.statements = []
        self.description = None
        self._rows = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, query, params=None):
        text = flatten(query)
        self.statements.append(text)
        if "FROM pg_catalog.pg_class" in text:
            self._rows = self.relations
        elif "set_config" in text:
            self._rows = [(params[1],)]
        elif "hashtext" in text:
            self._rows = [(int(p.split("::int")[0].replace("SELECT ", "")), 3, 12345)
                          for p in text.split(" UNION ALL ")]
        elif text.startswith("SELECT 0::int, count(*)"):
            parts = text.split(" UNION ALL ")
            self._rows = []
            for part in parts:
                index = int(part.split("::int")[0].replace("SELECT ", ""))
                table = part.split(" FROM ")[1]
                self._rows.append((index, self.counts[table]))
        elif text.startswith("SELECT * FROM"):
            self.description = [("name",), ("applied_at",)]
            self._rows = self.migrations
        elif text.startswith("SELECT count(*) FROM"):
            self._rows = [(len(self.migrations),)]
        else:
            raise AssertionError("unexpected statement: " + text)

    def fetchall(self):
        return list(self._rows)

    def fetchone(self):
        return self._rows[0]


class FakeConn:
    def __init__(self, cursor):
        self.cur = cursor
        self.session = None
        self.closed = False
        self.rolled_back = False

    def set_session(self, **kwargs):
        self.session = kwargs

    def cursor(self):
        return self.cur

    def rollback(self):
        self.rolled_back = True

    def close(self):
        self.closed = True


def test_inspect_database_counts_in_one_snapshot_and_one_statement():
    import datetime

    relations = [
        ("public", "_migrations", "r", 1.0, False),
        ("public", "knowledge_base", "r", 580.0, False),
        ("public", "big", "r", 2e7, False),
        ("public", "fresh", "r", -1.0, False),
        ("audit", "events", "p", 50.0, False),
        ("public", "v_badges", "v", 0.0, False),
    ]
    # Ordinary tables are counted ONLY (an inheritance child is its own
    # table); a partitioned parent as a whole (its partitions are not listed).
    counts = {'ONLY "public"."_migrations"': 1, 'ONLY "public"."knowledge_base"': 580,
              'ONLY "public"."fresh"': 9, '"audit"."events"': 51}
    when = datetime.datetime(2026, 2, 13, 10, 0, tzinfo=datetime.UTC)
    cur = FakeCursor(relations, counts, migrations=[("20260213_x.sql", when)])
    conn = FakeConn(cur)
    options = dict(count="auto", exact_max_rows=10_000_000,
                   expected=[("public", "user_validation_stats"), ("public", "v_badges")],
                   checksum=[("public", "knowledge_base"), ("public", "nope")],
                   data_tables=[], migrations=("public", "_migrations"))
    info = inv.inspect_database(conn, options)

    assert conn.session == {"isolation_level": "REPEATABLE READ", "readonly": True, "autocommit": False}
    assert conn.closed and conn.rolled_back
    count_statements = [s for s in cur.statements if "count(*)" in s and "hashtext" not in s]
    assert len(count_statements) == 1  # every exact count in one statement
    assert info["tables"] == {
        "_migrations": {"rows": 1, "method": "exact"},
        "knowledge_base": {"rows": 580, "method": "exact"},
        "big": {"rows": 20_000_000, "method": "estimate"},
        "fresh": {"rows": 9, "method": "exact"},
        "audit.events": {"rows": 51, "method": "exact"},
    }
    assert info["total_rows"] == 1 + 580 + 20_000_000 + 9 + 51
    assert info["has_data"] is True
    assert info["missing_tables"] == ["user_validation_stats"]  # the view satisfies its entry
    assert info["checksums"] == {
        "knowledge_base": {"rows": 3, "checksum": "3:12345"},
        "nope": {"rows": None, "checksum": None, "missing": True},
    }
    assert info["migrations"] == {
        "table_exists": True,
        "count": 1,
        "rows": [{"name": "20260213_x.sql", "applied_at": "2026-02-13T10:00:00+00:00"}],
    }


def test_jsonable():
    import decimal
    import uuid

    assert inv.jsonable(decimal.Decimal("12")) == 12
    assert inv.jsonable(decimal.Decimal("1.5")) == 1.5
    assert inv.jsonable(decimal.Decimal("Infinity")) == float("inf")
    assert inv.jsonable(memoryview(b"\x01\xff")) == "01ff"
    u = uuid.uuid4()
    assert inv.jsonable([u, {"k": None}]) == [str(u), {"k": None}]


def test_inspect_database_leaves_extension_tables_out():
    relations = [
        ("public", "knowledge_base", "r", -1.0, False),
        ("public", "spatial_ref_sys", "r", 8500.0, True),
    ]
    cur = FakeCursor(relations, {'ONLY "public"."knowledge_base"': 0})
    options = dict(count="exact", exact_max_rows=0, expected=[("public", "spatial_ref_sys")], checksum=[],
                   data_tables=[], migrations=("public", "_migrations"))
    info = inv.inspect_database(FakeConn(cur), options)
    # Not the app's data: not listed, not counted; it still satisfies an expected name.
    assert info["tables"] == {"knowledge_base": {"rows": 0, "method": "exact"}}
    assert info["has_data"] is False and info["missing_tables"] == []
    assert not any("spatial_ref_sys" in s for s in cur.statements if "count(*)" in s)
