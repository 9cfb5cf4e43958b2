# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only inventory of the databases on a server (private).

Used by ``db_info`` (and by ``db_rename`` to prove a target is empty).
Everything here only reads: each database is inspected in one
REPEATABLE READ READ ONLY transaction, so its counts are one snapshot.
"""

from __future__ import annotations

import datetime
import decimal
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.qadhya.dbops.plugins.module_utils import _connection as connection
from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile
from ansible_collections.qadhya.dbops.plugins.module_utils._catalog import (
    DEFAULT_SCHEMA,
    MIGRATIONS_TABLE,
    count_and_checksum,
    count_rows,
    counted_tables,
    holds_data,
    list_relations,
    relation_sql,
    table_key,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    ident,
    psycopg2,
    sql,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

# Re-exported: db_rename and db_info import them from here.
__all__ = ["DEFAULT_SCHEMA", "MIGRATIONS_TABLE", "Connector", "InventoryError", "inspect_database",
           "table_key"]

COUNT_METHODS = ("exact", "estimate", "auto")
URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
MASK = "********"
MIGRATION_ROWS_LIMIT = 1000


class InventoryError(Exception):
    """A failure whose message is one clear line, safe to show."""


# --------------------------------------------------------------------------
# Env file
# --------------------------------------------------------------------------


# The env file is read by the same parser that update_env writes with, so
# the database the inventory reports is the one the app will be given.
is_secret_key = envfile.is_secret_key


def parse_env_text(text):
    """Return {KEY: value} of an env file's text; later lines win."""
    return envfile.parse(text)


def mask_value(value):
    """Hide a password embedded in a URL value (scheme://user:pass@host)."""
    return URL_PASSWORD_RE.sub(lambda m: m.group(1) + MASK + m.group(3), value)


def split_env(values):
    """(public {key: value}, sorted secret key names) of parsed env values."""
    public = {}
    secrets = []
    for key, value in values.items():
        if is_secret_key(key):
            secrets.append(key)
        else:
            public[key] = mask_value(value)
    return public, sorted(secrets)


def read_env_file(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InventoryError(
            "env file %s does not exist; check env_file (the path on the Docker host)" % path
        ) from None
    except OSError as exc:
        raise InventoryError(
            "cannot read env file %s: %s; check env_file and the task's privileges (become)"
            % (path, exc.strerror or exc)
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InventoryError("env file %s is not valid UTF-8; check env_file" % path) from None
    return parse_env_text(text)


# --------------------------------------------------------------------------
# Table names and counting decisions
# --------------------------------------------------------------------------


def split_qualified(name):
    """Split 'schema.table' into its parts; double quotes protect dots.

    'kb' -> ('public', 'kb'); 'a.b' -> ('a', 'b'); '"x.y"' -> ('public', 'x.y');
    '"s"."t"' -> ('s', 't'). Without quotes, a name with several dots is
    split at the first one.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("table name must be a non-empty string")
    parts = []
    current = []
    quoted = False
    was_quoted = False
    i = 0
    while i < len(name):
        ch = name[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(name) and name[i + 1] == '"':
                    current.append('"')
                    i += 2
                    continue
                quoted = False
            else:
                current.append(ch)
        elif ch == '"' and not current:
            quoted = True
            was_quoted = True
        elif ch == "." and len(parts) == 0:
            parts.append(("".join(current), was_quoted))
            current = []
            was_quoted = False
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise ValueError("table name %r has an unterminated double quote" % name)
    parts.append(("".join(current), was_quoted))
    names = [text if q else text.strip() for text, q in parts]
    if any(not part for part in names):
        raise ValueError("table name %r has an empty part" % name)
    if len(names) == 1:
        return DEFAULT_SCHEMA, names[0]
    return names[0], names[1]


def choose_method(mode, reltuples, exact_max_rows):
    """'exact' or 'estimate' for one table.

    reltuples < 0 means the table was never analyzed: its estimate is
    unknown, so it is counted exactly whatever the mode.
    """
    if reltuples is None or reltuples < 0:
        return "exact"
    if mode == "estimate":
        return "estimate"
    if mode == "auto" and reltuples > exact_max_rows:
        return "estimate"
    return "exact"


def decide_has_data(tables, data_tables, ignore=(MIGRATIONS_TABLE,)):
    """True when the database holds the app's data (the one rule: _catalog.holds_data)."""
    return holds_data(tables, data_tables, ignore)


def top_tables(tables, limit=3):
    ranked = sorted(
        ((info["rows"], key) for key, info in tables.items() if info.get("rows", 0) > 0),
        key=lambda item: (-item[0], item[1]),
    )
    return ranked[:limit]


def _describe_data(name, info):
    ranked = top_tables(info.get("tables") or {})
    if not ranked:
        return "'%s'" % name
    parts = ["%d rows in %s" % (ranked[0][0], ranked[0][1])]
    parts += ["%d in %s" % (rows, key) for rows, key in ranked[1:]]
    more = len([1 for t in info["tables"].values() if t.get("rows", 0) > 0]) - len(ranked)
    if more > 0:
        parts.append("%d more table(s)" % more)
    return "'%s' (%s)" % (name, ", ".join(parts))


def decide(databases, configured, server_databases, env_given=True):
    """Cross the inventory with the env file.

    `databases`: {name: {has_data, tables, missing_tables, ...}} inspected;
    `configured`: database named in the env file (None when unknown);
    `server_databases`: every database name on the server.
    Returns dict(data_databases, configured_exists, mismatch, summary).
    """
    data_databases = sorted(name for name, info in databases.items() if info.get("has_data"))
    configured_exists = bool(configured) and configured in server_databases
    configured_has_data = bool(configured) and configured in data_databases
    mismatch = bool(configured) and not configured_has_data and bool(data_databases)

    if data_databases:
        described = [_describe_data(name, databases[name]) for name in data_databases]
        text = "data in " + " and ".join(described)
    else:
        text = "no database holds data (checked: %s)" % (", ".join(sorted(databases)) or "none")

    if not env_given:
        text += "; no env file given"
    elif not configured:
        text += "; the env file names no database"
    elif not configured_exists:
        text += "; app configured for '%s' which does not exist" % configured
    elif configured_has_data:
        text += "; app configured for '%s'" % configured
    else:
        text += "; app configured for '%s' which is empty" % configured
    if configured:
        text += " — they disagree" if mismatch else (" — they agree" if configured_has_data else "")
    if len(data_databases) > 1:
        text += "; more than one database holds data"
    # Missing tables matter where the app's data is or where it points;
    # the maintenance database lacking them is not news.
    relevant = set(data_databases) | ({configured} if configured in databases else set())
    for name in sorted(relevant):
        missing = databases[name].get("missing_tables") or []
        if missing:
            text += "; missing in '%s': %s" % (name, ", ".join(missing))
    return dict(
        data_databases=data_databases,
        configured_exists=configured_exists,
        mismatch=mismatch,
        summary=text,
    )


# --------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------


is_auth_failure = connection.is_auth_failure


class Connector(connection.Connector):
    """The shared connector, raising InventoryError (usable from worker threads)."""

    error = InventoryError


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------

LIST_DATABASES = """
SELECT d.datname,
       pg_catalog.pg_get_userbyid(d.datdba),
       pg_catalog.pg_encoding_to_char(d.encoding),
       d.datcollate,
       d.datallowconn,
       d.datistemplate,
       CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT')
            THEN pg_catalog.pg_database_size(d.oid) END,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datid = d.oid)
  FROM pg_catalog.pg_database d
 ORDER BY d.datname
"""


def list_databases(cur):
    cur.execute(LIST_DATABASES)
    result = {}
    for row in cur.fetchall():
        name, owner, encoding, collate, allow, template, size, conns = row
        result[name] = dict(
            owner=owner,
            encoding=encoding,
            collate=collate,
            allow_connections=bool(allow),
            is_template=bool(template),
            size_bytes=int(size) if size is not None else None,
            connections=int(conns),
        )
    return result


def select_databases(server, requested):
    """Names to inspect: `requested` (must exist) or every connectable one."""
    if not requested:
        return [
            name
            for name, info in sorted(server.items())
            if info["allow_connections"] and not info["is_template"]
        ]
    names = []
    for name in requested:
        if name not in server:
            raise InventoryError(
                "database '%s' does not exist on server; existing: %s"
                % (name, ", ".join(sorted(n for n in server if not server[n]["is_template"])))
            )
        if not server[name]["allow_connections"]:
            raise InventoryError(
                "database '%s' does not accept connections (ALLOW_CONNECTIONS is false, "
                "maybe an interrupted rename); allow connections or leave it out of databases" % name
            )
        if name not in names:
            names.append(name)
    return names


def jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def inspect_database(conn, options):
    """Inventory of one database through `conn` (a fresh connection).

    options: count, exact_max_rows, expected (list of (schema, table)),
    checksum (list of (schema, table)), data_tables (list of keys),
    migrations ((schema, table)).
    """
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    try:
        with conn.cursor() as cur:
            relations = list_relations(cur)
            exact_list = []
            tables = {}
            for schema, table in counted_tables(relations):
                reltuples = relations[(schema, table)]["reltuples"]
                method = choose_method(options["count"], reltuples, options["exact_max_rows"])
                entry = dict(rows=None, method=method)
                tables[table_key(schema, table)] = entry
                if method == "exact":
                    exact_list.append((schema, table))
                else:
                    entry["rows"] = int(round(reltuples))
            for (schema, table), rows in count_rows(cur, relations, exact_list).items():
                tables[table_key(schema, table)]["rows"] = rows

            missing = [
                table_key(schema, table)
                for schema, table in options["expected"]
                if (schema, table) not in relations
            ]

            checksums = {}
            present = [t for t in options["checksum"] if t in relations]
            absent = [t for t in options["checksum"] if t not in relations]
            for (schema, table), (rows, text) in count_and_checksum(cur, relations, present).items():
                checksums[table_key(schema, table)] = dict(rows=rows, checksum=text)
            for schema, table in absent:
                checksums[table_key(schema, table)] = dict(rows=None, checksum=None, missing=True)

            mig_schema, mig_table = options["migrations"]
            migrations = dict(table_exists=(mig_schema, mig_table) in relations, rows=[], count=0)
            if migrations["table_exists"]:
                mig_key = table_key(mig_schema, mig_table)
                if tables.get(mig_key, {}).get("method") == "exact":
                    migrations["count"] = tables[mig_key]["rows"]
                else:
                    cur.execute(sql.SQL("SELECT count(*) FROM {0}").format(
                        relation_sql(mig_schema, mig_table, relations[(mig_schema, mig_table)]["kind"])))
                    migrations["count"] = int(cur.fetchone()[0])
                cur.execute(
                    sql.SQL("SELECT * FROM {0} ORDER BY 1 LIMIT {1}").format(
                        ident(mig_schema, mig_table), sql.Literal(MIGRATION_ROWS_LIMIT)
                    )
                )
                columns = [desc[0] for desc in cur.description]
                migrations["rows"] = [
                    {columns[i]: jsonable(val) for i, val in enumerate(row)} for row in cur.fetchall()
                ]
        conn.rollback()
    finally:
        conn.close()

    result = dict(
        tables=tables,
        total_rows=sum(t["rows"] for t in tables.values()),
        has_data=decide_has_data(tables, options["data_tables"]),
        missing_tables=missing,
        migrations=migrations,
        checksums=checksums,
    )
    return result


def inspect_all(connector, names, options, parallel):
    """{name: inventory} for every name, `parallel` databases at a time."""

    def work(name):
        started = time.monotonic()
        conn = connector.open(name, autocommit=True)
        try:
            info = inspect_database(conn, options)
        except psycopg2.Error as exc:
            raise InventoryError(
                "inspecting database '%s' failed: %s" % (name, first_line(exc))
            ) from None
        info["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        return info

    if not names:
        return {}
    workers = max(1, min(int(parallel), len(names)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(name, pool.submit(work, name)) for name in names]
        # result() re-raises the worker's InventoryError in this thread.
        return {name: future.result() for name, future in futures}


def server_version(cur):
    """(version, encoding) of the session's server: the encoding is the connected database's, the
    one PostgreSQL converts a new database name into when it is renamed from there."""
    cur.execute("SELECT pg_catalog.current_setting('server_version'),"
                " pg_catalog.current_setting('server_encoding')")
    return tuple(cur.fetchone())
