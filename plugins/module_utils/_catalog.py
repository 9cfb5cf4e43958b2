# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection calls a database's tables, and when they hold data (private).

One definition, used by the inventory (db_info, db_rename), the backup
manifests and the restore comparison, so that "580 rows" means the same
thing before a backup, in its manifest and after a restore:

- counted tables are ordinary (``r``) and partitioned (``p``) tables of the
  user schemas; a partition is not listed (its parent counts its rows), and
  a table owned by an extension (``pg_depend.deptype = 'e'``, for example
  PostGIS's ``spatial_ref_sys``) is not the app's data and is left out;
- an ordinary table is counted with ``FROM ONLY``, so a legacy inheritance
  child's rows are counted once, under the child, as pg_dump dumps them;
- a database holds data when one of its counted tables (or of the
  ``data_tables`` asked for) has a row, the migrations bookkeeping aside.
"""

from __future__ import annotations

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import ident, sql

DEFAULT_SCHEMA = "public"
MIGRATIONS_TABLE = "_migrations"
TABLE_KINDS = ("r", "p")
# Tables counted per statement; keeps a statement reasonable on big schemas.
COUNT_BATCH = 400

# Every relation of the user schemas but partitions: tables (counted) and
# views, materialized views and foreign tables (they satisfy an expected
# table name). reltuples of a partitioned parent is the sum over its leaves,
# -1 when one of them was never analyzed.
RELATIONS = """
SELECT n.nspname,
       c.relname,
       c.relkind,
       CASE WHEN c.relkind = 'p' THEN
            (SELECT CASE WHEN bool_or(l.reltuples < 0) THEN -1
                         ELSE coalesce(sum(l.reltuples), 0) END
               FROM pg_catalog.pg_partition_tree(c.oid) t
               JOIN pg_catalog.pg_class l ON l.oid = t.relid
              WHERE t.isleaf)
            ELSE c.reltuples END::float8,
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend dep
                WHERE dep.classid = 'pg_catalog.pg_class'::regclass
                  AND dep.objid = c.oid AND dep.deptype = 'e')
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND n.nspname NOT LIKE 'pg\\_temp\\_%'
 ORDER BY n.nspname, c.relname
"""


def table_key(schema, table):
    """Result and manifest key of a table: bare name in public, 'schema.table' elsewhere."""
    if schema == DEFAULT_SCHEMA:
        return table
    return "%s.%s" % (schema, table)


def list_relations(cur):
    """{(schema, name): {kind, reltuples, extension}} of one database."""
    cur.execute(RELATIONS)
    return {
        (schema, name): dict(kind=kind, reltuples=reltuples, extension=bool(extension))
        for schema, name, kind, reltuples, extension in cur.fetchall()
    }


def counted_tables(relations):
    """The (schema, table) pairs of `relations` that are counted, in catalog order."""
    return [
        key for key, rel in relations.items()
        if rel["kind"] in TABLE_KINDS and not rel["extension"]
    ]


def partitioned_tables(relations):
    """Counted tables whose rows live in partitions (no TABLE DATA of their own in a dump)."""
    return [key for key in counted_tables(relations) if relations[key]["kind"] == "p"]


def relation_sql(schema, table, kind):
    """`ONLY schema.table` for an ordinary table; a partitioned table (or a view) as a whole."""
    if kind == "r":
        return sql.SQL("ONLY {}").format(ident(schema, table))
    return ident(schema, table)


def _union(template, indexed):
    """`template` ("SELECT {0}::int, ... FROM {1}") for each (i, (schema, table, kind)), UNION ALL."""
    parts = [sql.SQL(template).format(sql.Literal(i), relation_sql(*rel)) for i, rel in indexed]
    return sql.SQL(" UNION ALL ").join(parts)


def count_statement(indexed):
    """One `SELECT i, count(*) FROM ... UNION ALL ...` for [(i, (schema, table, kind))]."""
    return _union("SELECT {0}::int, count(*) FROM {1}", indexed)


def _scan(cur, relations, tables, statement):
    """(table, [values after the index]) for each of `tables`, read by `statement(indexed)`
    COUNT_BATCH tables at a time, all in the cursor's current snapshot."""
    indexed = [(i, (schema, table, relations[(schema, table)]["kind"]))
               for i, (schema, table) in enumerate(tables)]
    for start in range(0, len(indexed), COUNT_BATCH):
        cur.execute(statement(indexed[start:start + COUNT_BATCH]))
        for i, *values in cur.fetchall():
            yield tables[i], values


def count_rows(cur, relations, tables=None):
    """{(schema, table): exact rows} of `tables` (default: every counted table).

    One statement per COUNT_BATCH tables, so a schema of hundreds of tables
    costs a few round trips, all in the cursor's current snapshot.
    """
    tables = counted_tables(relations) if tables is None else list(tables)
    return {table: int(rows) for table, (rows,) in _scan(cur, relations, tables, count_statement)}


def row_counts(cur):
    """{table key: exact rows} of every counted table: what a manifest records."""
    relations = list_relations(cur)
    return {table_key(*key): rows for key, rows in count_rows(cur, relations).items()}


def tables_with_data(tables, data_tables=None, ignore=(MIGRATIONS_TABLE,)):
    """The entries of `tables` ({key: {rows, ...}}) that make a database hold data.

    With `data_tables` (keys), only those tables are looked at; otherwise
    every table but the `ignore`d bookkeeping ones. A table owned by an
    extension never counts, whatever the list.
    """
    if data_tables:
        candidates = {key: tables[key] for key in data_tables if key in tables}
    else:
        candidates = {key: info for key, info in tables.items() if key not in ignore}
    return {
        key: info for key, info in candidates.items()
        if (info or {}).get("rows") and info["rows"] > 0 and not info.get("extension")
    }


def holds_data(tables, data_tables=None, ignore=(MIGRATIONS_TABLE,)):
    """True when some table of `tables` that counts as data has a row (see tables_with_data)."""
    return bool(tables_with_data(tables, data_tables, ignore))


# The content checksum of a table: its row count and the sum of a hash of
# each row's text, order-independent, so that two scans of the same rows
# agree whatever order they come in. db_info's checksum_tables, the
# consolidation's proof and the backup's manifest give it in the same
# "rows:sum" form, computed by count_and_checksum alone.
ROW_HASH_SUM = "coalesce(sum(pg_catalog.hashtext(_qadhya_row::text)::bigint), 0)"

# The settings that change how a row prints as text, pinned in every session
# that computes content checksums, so that the dump's server and the one a
# copy is restored on (a drill's scratch container with its own defaults)
# print the same row the same way.
CHECKSUM_SETTINGS = (
    ("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"), ("bytea_output", "hex"), ("lc_monetary", "C"),
)
# Recorded in a manifest beside its checksums: a restore compares them only
# when it computes them the same way.
CHECKSUM_METHOD = "rows:sum(hashtext(row::text)) with " + ", ".join("%s=%s" % kv for kv in CHECKSUM_SETTINGS)


def pin_checksum_settings(cur):
    """Pin CHECKSUM_SETTINGS for the rest of the session (our own, so nothing else sees them);
    session-wide, as an autocommit session would drop a transaction's own at once."""
    for name, value in CHECKSUM_SETTINGS:
        cur.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))


def checksum_text(rows, total):
    """The "rows:sum" form of a table's content checksum."""
    return "%d:%d" % (int(rows), int(total))


def count_checksum_statement(indexed):
    """One `SELECT i, count(*), <row hash sum> FROM ... UNION ALL ...` for [(i, (schema, table, kind))]:
    the count and the checksum come from the same single scan of each table."""
    return _union("SELECT {0}::int, count(*), " + ROW_HASH_SUM + " FROM {1} AS _qadhya_row", indexed)


def count_and_checksum(cur, relations, tables=None):
    """{(schema, table): (exact rows, "rows:sum" checksum)} of `tables` (default: every counted table),
    one scan per table, COUNT_BATCH tables per statement, in the cursor's current snapshot."""
    tables = counted_tables(relations) if tables is None else list(tables)
    if not tables:
        return {}
    pin_checksum_settings(cur)
    return {table: (int(rows), checksum_text(rows, total))
            for table, (rows, total) in _scan(cur, relations, tables, count_checksum_statement)}
