# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the one definition of a table and of "holds data" (_catalog), and _errors."""

from __future__ import annotations

import pytest
from sqltext import flatten

from ansible_collections.qadhya.dbops.plugins.module_utils import _catalog as catalog
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

# What RELATIONS returns on a database with a partitioned table, a legacy
# inheritance child, an extension's table, a view and the bookkeeping table.
ROWS = [
    ("audit", "events", "p", 30.0, False),
    ("public", "_migrations", "r", 0.0, False),
    ("public", "knowledge_base", "r", 580.0, False),
    ("public", "kb_archive", "r", 4.0, False),      # INHERITS (knowledge_base)
    ("public", "spatial_ref_sys", "r", 8500.0, True),
    ("public", "v_badges", "v", 0.0, False),
]


class Cursor:
    def __init__(self, counts):
        self.counts = counts
        self.statements = []
        self.rows = []

    def execute(self, query, params=None):
        text = flatten(query)
        self.statements.append(text)
        if "FROM pg_catalog.pg_class" in text:
            self.rows = ROWS
            return
        if "set_config" in text:
            self.rows = []
            return
        self.rows = []
        for part in text.split(" UNION ALL "):
            index = int(part.split("::int")[0].replace("SELECT ", ""))
            self.rows.append((index, self.counts[part.split(" FROM ", 1)[1]]))

    def fetchall(self):
        return list(self.rows)


COUNTS = {'"audit"."events"': 30, 'ONLY "public"."_migrations"': 1, 'ONLY "public"."knowledge_base"': 580,
          'ONLY "public"."kb_archive"': 4}


def test_relations_query_leaves_partitions_and_system_schemas_out():
    text = catalog.RELATIONS
    assert "NOT c.relispartition" in text
    assert "deptype = 'e'" in text and "pg_partition_tree" in text
    assert "'pg_catalog', 'information_schema'" in text


def test_counted_tables_are_ordinary_and_partitioned_without_extensions():
    cur = Cursor(COUNTS)
    relations = catalog.list_relations(cur)
    assert catalog.counted_tables(relations) == [
        ("audit", "events"), ("public", "_migrations"), ("public", "knowledge_base"),
        ("public", "kb_archive")]
    assert catalog.partitioned_tables(relations) == [("audit", "events")]


def test_row_counts_count_each_row_once_in_one_statement():
    cur = Cursor(COUNTS)
    assert catalog.row_counts(cur) == {"audit.events": 30, "_migrations": 1, "knowledge_base": 580,
                                       "kb_archive": 4}
    counts = [s for s in cur.statements if "count(*)" in s]
    assert len(counts) == 1
    # A parent would count its inheritance children again; a partitioned
    # table is counted as a whole (its partitions are not listed).
    assert 'FROM ONLY "public"."knowledge_base"' in counts[0]
    assert 'FROM "audit"."events"' in counts[0]
    # Counting alone leaves the session's settings as they are: only checksums pin them.
    assert not any("set_config" in s for s in cur.statements)


def test_count_rows_batches(monkeypatch):
    monkeypatch.setattr(catalog, "COUNT_BATCH", 2)
    cur = Cursor(COUNTS)
    relations = catalog.list_relations(cur)
    result = catalog.count_rows(cur, relations)
    assert len([s for s in cur.statements if "count(*)" in s]) == 2
    assert result[("public", "kb_archive")] == 4 and len(result) == 4


def test_table_key():
    assert catalog.table_key("public", "users") == "users"
    assert catalog.table_key("audit", "events") == "audit.events"


@pytest.mark.parametrize("tables,data_tables,expected", [
    ({"knowledge_base": {"rows": 580}}, None, True),
    ({"knowledge_base": {"rows": 0}, "_migrations": {"rows": 3}}, None, False),
    ({"spatial_ref_sys": {"rows": 8500, "extension": True}}, None, False),
    ({"knowledge_base": {"rows": None}}, None, False),
    ({"knowledge_base": {"rows": 580}, "users": {"rows": 0}}, ["users"], False),
    ({"knowledge_base": {"rows": 0}, "users": {"rows": 2}}, ["users"], True),
    ({"users": {"rows": 2}}, ["missing_table"], False),
    ({}, None, False),
])
def test_holds_data(tables, data_tables, expected):
    assert catalog.holds_data(tables, data_tables) is expected


def test_tables_with_data_can_count_the_bookkeeping_too():
    tables = {"_migrations": {"rows": 3}, "users": {"rows": 0}}
    assert catalog.tables_with_data(tables) == {}
    assert catalog.tables_with_data(tables, ignore=()) == {"_migrations": {"rows": 3}}


@pytest.mark.parametrize("error,expected", [
    (ValueError("first\nsecond"), "first"),
    (ValueError("\n  \n  FATAL:  no\nDETAIL: x"), "FATAL:  no"),
    (ValueError(""), "ValueError"),
    ("text\nmore", "text"),
    ("", ""),
])
def test_first_line(error, expected):
    assert first_line(error) == expected


def test_first_line_default():
    assert first_line(OSError(), "connection failed") == "connection failed"


class ChecksumCursor(Cursor):
    """Answers the count-and-checksum statement: (index, rows, hash sum) per table."""

    def execute(self, query, params=None):
        super().execute(sql_without_alias(query), params)
        self.statements[-1] = flatten(query)
        self.rows = [row + (-7 * row[1],) for row in self.rows] if self.rows is not ROWS else ROWS


def sql_without_alias(query):
    return flatten(query).replace(" AS _qadhya_row", "")


def test_count_and_checksum_come_from_one_scan_per_table(monkeypatch):
    monkeypatch.setattr(catalog, "COUNT_BATCH", 3)
    cur = ChecksumCursor(COUNTS)
    relations = catalog.list_relations(cur)
    result = catalog.count_and_checksum(cur, relations)
    assert result[("public", "knowledge_base")] == (580, "580:-4060")
    assert result[("audit", "events")] == (30, "30:-210") and len(result) == 4
    scans = [s for s in cur.statements if "count(*)" in s]
    assert len(scans) == 2  # 4 tables, 3 per statement
    # each table appears once, counted and hashed by the same SELECT, read as it is counted
    assert all(s.count("hashtext(_qadhya_row::text)") == s.count("count(*)") for s in scans)
    assert 'FROM ONLY "public"."knowledge_base" AS _qadhya_row' in scans[0]
    # the settings that change how a row prints are pinned before the first scan
    first_scan = cur.statements.index(scans[0])
    assert sum("set_config" in s for s in cur.statements[:first_scan]) == len(catalog.CHECKSUM_SETTINGS)
