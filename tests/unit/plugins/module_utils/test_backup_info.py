# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for db_backup_info: which backup vouches for a live database."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _backup_files as bf

UTC = datetime.timezone.utc  # noqa: UP017
NOW = datetime.datetime(2026, 2, 11, 12, 0, 0, tzinfo=UTC)


def write_backup(directory, prefix, stamp, database, for_database=None, purpose=None, rows=None,
                 verified=True, payload=None, manifest_bytes=None):
    """A backup file and its manifest as db_backup writes them."""
    name = "%s-%s.dump" % (prefix, stamp)
    data = payload if payload is not None else b"PGDMP" + name.encode()
    (directory / name).write_bytes(data)
    manifest = dict(tool="qadhya.dbops", manifest_version=1, database=database, format="custom",
                    file=name, bytes=len(data) if manifest_bytes is None else manifest_bytes,
                    sha256=hashlib.sha256(data).hexdigest(), row_counts=rows or {},
                    finished_at="2026-02-11T00:00:00.000000Z",
                    verified=dict(level="structure", ok=verified))
    if for_database is not None:
        manifest["for_database"] = for_database
    if purpose is not None:
        manifest["purpose"] = purpose
    (directory / (name + ".manifest.json")).write_text(json.dumps(manifest))
    return name


def entry(name, database="qadhya", for_database=None, purpose="manual", ok=True, stamp=None):
    return dict(name=name, database=database, for_database=for_database or database, purpose=purpose,
                ok=ok, stamp=stamp or name)


# --------------------------------------------------------------------------
# select_newest: the pure choice
# --------------------------------------------------------------------------


def test_dropped_empty_target_is_never_the_newest():
    entries = [
        entry("qadhya-2", purpose="dropped_empty_target"),
        entry("moncabinet-1", database="moncabinet", for_database="qadhya", purpose="pre_consolidation"),
    ]
    assert bf.select_newest(entries, "qadhya")["name"] == "moncabinet-1"


def test_a_backup_taken_for_a_name_counts_as_its_backup():
    entries = [entry("src-1", database="src", for_database="dst")]
    assert bf.select_newest(entries, "dst")["name"] == "src-1"
    # ... and still as a backup of the database it was dumped from.
    assert bf.select_newest(entries, "src")["name"] == "src-1"
    assert bf.select_newest(entries, "other") == {}


def test_untrusted_backups_are_skipped_and_none_gives_empty():
    entries = [entry("qadhya-3", ok=False), entry("qadhya-2")]
    assert bf.select_newest(entries, "qadhya")["name"] == "qadhya-2"
    assert bf.select_newest([entry("qadhya-3", ok=False)], "qadhya") == {}
    assert bf.select_newest([], "qadhya") == {}
    only_dropped = [entry("qadhya-4", purpose="dropped_empty_target")]
    assert bf.select_newest(only_dropped, "qadhya") == {}


# --------------------------------------------------------------------------
# backup_problems: why a backup cannot vouch
# --------------------------------------------------------------------------


MANIFEST = dict(database="app", bytes=10, sha256="ab", verified=dict(level="structure", ok=True))


@pytest.mark.parametrize("changes,size,sha,expected", [
    ({}, 10, None, []),
    ({}, 10, "ab", []),
    ({}, None, None, ["backup file is missing"]),
    ({}, 9, None, ["file has 9 bytes, manifest says 10"]),
    ({}, 10, "cd", ["sha256 differs from the manifest (file damaged)"]),
    ({"verified": dict(level="none", ok=None)}, 10, None, ["not verified"]),
    ({"verified": dict(level="structure", ok=False)}, 10, None, ["failed verification"]),
    ({"database": "x"}, 10, None, ["is a backup of 'x', not of 'app'"]),
    ({"database": "x", "for_database": "app"}, 10, None, []),
])
def test_backup_problems(changes, size, sha, expected):
    assert bf.backup_problems(dict(MANIFEST, **changes), size, "app", sha) == expected


# --------------------------------------------------------------------------
# list_backups: reading a directory
# --------------------------------------------------------------------------


def test_list_backups_after_a_consolidation(tmp_path):
    """The incident's sequence: source dumped for the target, then the empty target before its drop."""
    source = write_backup(tmp_path, "moncabinet", "20260211T100000Z", "moncabinet", "qadhya",
                          "pre_consolidation", rows={"knowledge_base": 580, "users": 2, "web_sources": 6})
    empty = write_backup(tmp_path, "qadhya", "20260211T100005Z", "qadhya", None, "dropped_empty_target",
                         rows={"knowledge_base": 0})
    write_backup(tmp_path, "other", "20260211T110000Z", "other")
    entries, ignored = bf.list_backups(str(tmp_path), "qadhya", now=NOW)
    assert [e["name"] for e in entries] == [empty, source]
    assert ignored == []
    newest = bf.select_newest(entries, "qadhya")
    assert newest["name"] == source and newest["total_rows"] == 588
    assert newest["for_database"] == "qadhya" and newest["purpose"] == "pre_consolidation"
    assert newest["age_h"] == 2.0 and newest["mode"] is not None and newest["ok"] is True
    assert entries[0]["total_rows"] == 0 and entries[0]["ok"] is True


def test_list_backups_old_manifests_serve_their_database(tmp_path):
    name = write_backup(tmp_path, "qadhya", "20260210T000000Z", "qadhya")
    entries, _ignored = bf.list_backups(str(tmp_path), "qadhya", now=NOW)
    assert [(e["name"], e["for_database"], e["purpose"]) for e in entries] == [(name, "qadhya", "unknown")]


def test_list_backups_checks_files(tmp_path):
    good = write_backup(tmp_path, "db", "20260209T000000Z", "db")
    truncated = write_backup(tmp_path, "db", "20260210T000000Z", "db", manifest_bytes=999)
    flipped = write_backup(tmp_path, "db", "20260210T010000Z", "db")
    (tmp_path / flipped).write_bytes(b"X" + (tmp_path / flipped).read_bytes()[1:])
    missing = write_backup(tmp_path, "db", "20260210T020000Z", "db")
    (tmp_path / missing).unlink()
    unverified = write_backup(tmp_path, "db", "20260210T030000Z", "db", verified=None)
    (tmp_path / "db-20260211T000000Z.dump").write_bytes(b"PGDMP no manifest")
    (tmp_path / "db-20260211T010000Z.dump").write_bytes(b"PGDMP")
    (tmp_path / "db-20260211T010000Z.dump.manifest.json").write_text('{"tool": "someone else"}')
    (tmp_path / "notes.txt").write_text("not a backup")

    entries, ignored = bf.list_backups(str(tmp_path), "db", now=NOW)
    by_name = {e["name"]: e for e in entries}
    assert [e["name"] for e in entries] == [unverified, missing, flipped, truncated, good]
    assert by_name[truncated]["problems"] == ["file has %d bytes, manifest says 999"
                                              % by_name[truncated]["size_on_disk"]]
    assert by_name[missing]["problems"] == ["backup file is missing"]
    assert by_name[missing]["size_on_disk"] is None
    assert by_name[unverified]["problems"] == ["not verified"]
    assert by_name[flipped]["ok"] is True  # same size: only the checksum tells
    assert ignored == ["db-20260211T000000Z.dump", "db-20260211T010000Z.dump"]
    assert bf.select_newest(entries, "db")["name"] == flipped

    checked, _ignored = bf.list_backups(str(tmp_path), "db", checksum=True, now=NOW)
    by_name = {e["name"]: e for e in checked}
    assert by_name[flipped]["problems"] == ["sha256 differs from the manifest (file damaged)"]
    assert by_name[good]["sha256_checked"] is True
    assert bf.select_newest(checked, "db")["name"] == good


def test_list_backups_missing_directory(tmp_path):
    assert bf.list_backups(str(tmp_path / "nope"), "db") == ([], [])


def test_manifest_records_what_the_backup_serves():
    when = NOW
    manifest = bf.build_manifest(
        database="moncabinet", server_version="15", pg_dump_version="pg_dump 15", fmt="custom", level=6,
        file_name="moncabinet-x.dump", nbytes=1, sha256="x", row_counts={"a": 1}, started_at=when,
        finished_at=when, host="h", for_database="qadhya", purpose="pre_consolidation",
        partitioned_tables=["audit.events"])
    assert manifest["for_database"] == "qadhya" and manifest["purpose"] == "pre_consolidation"
    assert manifest["partitioned_tables"] == ["audit.events"]
    plain = bf.build_manifest(
        database="db", server_version="15", pg_dump_version="p", fmt="custom", level=6, file_name="f",
        nbytes=1, sha256="x", row_counts={}, started_at=when, finished_at=when, host="h")
    assert plain["for_database"] == "db" and plain["purpose"] == "manual"
    assert plain["partitioned_tables"] == []


def test_missing_table_data_skips_partitioned_parents():
    toc = ["3346; 0 16390 TABLE DATA public knowledge_base app",
           "3347; 0 16400 TABLE DATA audit events_2026 app"]
    counts = {"knowledge_base": 580, "audit.events": 9, "users": 2}
    assert bf.missing_table_data(toc, counts, partitioned=["audit.events"]) == ["users"]
    assert bf.missing_table_data(toc, counts) == ["audit.events", "users"]
