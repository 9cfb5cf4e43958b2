# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for db_backup: names, manifests, retention, space, streaming, the dump pipeline."""

from __future__ import annotations

import datetime
import errno
import gzip
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest


from ansible_collections.qadhya.dbops.plugins.module_utils import _backup as bk
from ansible_collections.qadhya.dbops.plugins.module_utils import _backup_files as bf
from ansible_collections.qadhya.dbops.plugins.module_utils import _backup_process as bp
from ansible_collections.qadhya.dbops.plugins.module_utils import _catalog as catalog

UTC = datetime.timezone.utc  # noqa: UP017
NOW = datetime.datetime(2026, 2, 11, 12, 0, 0, tzinfo=UTC)
MB = 1 << 20


def days_ago(n, hours=0):
    return NOW - datetime.timedelta(days=n, hours=hours)


# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,ext", [("custom", "dump"), ("plain_gzip", "sql.gz"), ("plain_zstd", "sql.zst")])
def test_backup_name_round_trip(fmt, ext):
    when = datetime.datetime(2026, 2, 11, 10, 15, 0, 123456, tzinfo=UTC)
    name = bf.backup_name("moncabinet", when, fmt)
    assert name == "moncabinet-20260211T101500Z.%s" % ext
    parsed = bf.parse_name(name)
    assert parsed == dict(prefix="moncabinet", when=when.replace(microsecond=0), format=fmt)


def test_backup_name_uses_utc_whatever_the_zone():
    paris = datetime.timezone(datetime.timedelta(hours=1))
    when = datetime.datetime(2026, 2, 11, 11, 15, 0, tzinfo=paris)
    assert bf.backup_name("db", when, "custom") == "db-20260211T101500Z.dump"


@pytest.mark.parametrize("prefix", ["my-db-2026", "base arabe قاعدة", "a.b", "x-20250101T000000Z"])
def test_parse_name_keeps_odd_prefixes(prefix):
    name = bf.backup_name(prefix, NOW, "plain_gzip")
    assert bf.parse_name(name)["prefix"] == prefix


@pytest.mark.parametrize("name", [
    "moncabinet-20260211T101500Z.tar",
    "moncabinet-20260211T1015Z.dump",
    "moncabinet.dump",
    "-20260211T101500Z.dump",
    "moncabinet-20261399T101500Z.dump",  # month 13: not a time stamp
    "moncabinet-20260211T101500Z.dump.manifest.json",
    ".moncabinet-20260211T101500Z.dump.partial-abc",
])
def test_parse_name_rejects_other_files(name):
    assert bf.parse_name(name) is None


def test_default_prefix_is_file_name_safe():
    assert bf.default_prefix("a/b\\c") == "a_b_c"
    assert bf.default_prefix(".hidden") == "_hidden"
    assert bf.default_prefix('we"ird; name') == 'we"ird; name'


@pytest.mark.parametrize("prefix", ["", "a/b", ".x", "nul\x00", "x" * 181])
def test_validate_prefix_refuses(prefix):
    with pytest.raises(bf.BackupError, match="name_prefix"):
        bf.validate_prefix(prefix)


def test_scratch_name_is_short_fresh_and_plain():
    names = {bk.scratch_name('Très "long"; name ' * 10) for _attempt in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.startswith("dbops_verify_tr_s_long_name_")
        assert len(name.encode()) <= 63
        assert all(c.isalnum() or c == "_" for c in name)
    assert bk.scratch_name("!!!").startswith("dbops_verify_db_")


def test_only_our_unused_scratch_databases_whose_process_is_gone_are_orphans():
    alive = {101}.__contains__
    ours = bk.scratch_name("moncabinet")
    rows = [
        (ours, 0, bk.SCRATCH_MARK % (202, "vps-1")),          # its process is gone: orphan
        (bk.scratch_name("a"), 0, None),                        # killed before its mark: orphan
        (bk.scratch_name("b"), 0, bk.SCRATCH_MARK % (101, "vps-1")),  # still restoring
        (bk.scratch_name("c"), 1, bk.SCRATCH_MARK % (202, "vps-1")),  # a session on it
        (bk.scratch_name("d"), 0, bk.SCRATCH_MARK % (202, "vps-2")),  # another host's: cannot tell
        ("dbops_verify_moncabinet", 0, None),                   # not our pattern
        ("dbops_verify_x_1234567", 0, None),
        ("moncabinet", 0, None),
    ]
    assert bk.orphaned_scratch(rows, "vps-1", alive) == [ours, rows[1][0]]
    assert all(bk.SCRATCH_NAME.match(bk.scratch_name(n)) for n in ("x", "Très long " * 9, "!!!"))


def test_pid_alive_tells_a_gone_process():
    assert bk.pid_alive(os.getpid())
    assert not bk.pid_alive(2 ** 22 + 12345)


def test_conninfo_dbname_quotes_everything():
    assert bp.conninfo_dbname("moncabinet") == "dbname='moncabinet'"
    assert bp.conninfo_dbname("it's a \\ test") == "dbname='it\\'s a \\\\ test'"
    # a name that looks like options or a URI stays a name
    assert bp.conninfo_dbname("postgres://x host=evil") == "dbname='postgres://x host=evil'"


def test_table_key():
    assert catalog.table_key("public", "knowledge_base") == "knowledge_base"
    assert catalog.table_key("audit", "log") == "audit.log"


def test_key_candidates_cover_dots_in_names():
    key = catalog.table_key("my schema", "t.1")
    assert ("my schema", "t.1") in bf.key_candidates(key)
    assert bf.key_candidates("users") == [("public", "users")]


# --------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------


def make_manifest(name="moncabinet-20260211T101500Z.dump", database="moncabinet", verified_ok=True,
                  **over):
    fmt = bf.parse_name(name)["format"] if bf.parse_name(name) else "custom"
    manifest = bf.build_manifest(
        database=database, server_version="15.18", pg_dump_version="pg_dump (PostgreSQL) 15.18",
        fmt=fmt, level=6, file_name=name, nbytes=1234, sha256="ab" * 32,
        row_counts={"knowledge_base": 580, "users": 2, "web_sources": 6},
        started_at=NOW, finished_at=NOW + datetime.timedelta(seconds=2.5), host="vps1",
        container="qadhya-postgres", encoding="UTF8",
        verified=dict(level="structure", ok=verified_ok, at=bf.iso(NOW)),
    )
    manifest.update(over)
    return manifest


def test_build_manifest_fields_and_no_secrets():
    manifest = make_manifest()
    assert manifest["tool"] == "qadhya.dbops"
    assert manifest["manifest_version"] == 1
    assert manifest["row_counts"] == {"knowledge_base": 580, "users": 2, "web_sources": 6}
    assert manifest["compression"] == {"method": "pg_dump-custom", "level": 6}
    assert manifest["duration_s"] == 2.5
    assert manifest["started_at"] == "2026-02-11T12:00:00.000000Z"
    text = bf.manifest_bytes(manifest).decode()
    assert json.loads(text) == manifest
    for word in ("password", "PGPASSWORD", "postgresql://", "host="):
        assert word not in text
    assert set(manifest) >= {
        "database", "server_version", "pg_dump_version", "format", "compression", "file", "bytes",
        "sha256", "row_counts", "started_at", "finished_at", "duration_s", "verified", "host",
    }


def test_build_manifest_keeps_unicode_readable():
    manifest = make_manifest(row_counts={"قوانين": 3})
    assert "قوانين" in bf.manifest_bytes(manifest).decode("utf-8")


def test_manifest_problem_cases():
    name = "moncabinet-20260211T101500Z.dump"
    assert bf.manifest_problem(make_manifest(), name) is None
    assert bf.manifest_problem(make_manifest(), name, database="moncabinet", prefix="moncabinet") is None
    assert "not written" in bf.manifest_problem(make_manifest(tool="other"), name)
    assert "manifest_version" in bf.manifest_problem(make_manifest(manifest_version=2), name)
    assert "describes" in bf.manifest_problem(make_manifest(), "moncabinet-20260211T101501Z.dump")
    assert "format" in bf.manifest_problem(make_manifest(format="plain_gzip"), name)
    assert "database" in bf.manifest_problem(make_manifest(), name, database="qadhya")
    assert "prefix" in bf.manifest_problem(make_manifest(), name, prefix="other")
    assert bf.manifest_problem([], name) == "not a JSON object"
    assert bf.manifest_problem(make_manifest(sha256=None), name) == "has no sha256/bytes"


def test_is_verified():
    assert bf.is_verified(make_manifest())
    assert not bf.is_verified(make_manifest(verified_ok=False))
    assert not bf.is_verified(make_manifest(verified=dict(level="none", ok=None)))
    assert not bf.is_verified(make_manifest(verified=dict(level="none", ok=True)))
    assert not bf.is_verified(make_manifest(verified=None))


# --------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------


def entry(age_days, verified=True, prefix="db", hours=0):
    when = days_ago(age_days, hours=hours).replace(microsecond=0)
    return dict(name=bf.backup_name(prefix, when, "custom"), when=when, verified=verified)


def names(entries):
    return sorted(e["name"] for e in entries)


def test_retention_deletes_only_older_than_cutoff_beyond_keep():
    backups = [entry(d) for d in (0, 1, 2, 3, 4, 5, 6, 7, 40, 50, 60)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=30, retention_keep=7)
    assert names(delete) == names(backups[8:])
    assert names(keep) == names(backups[:8])


def test_retention_keep_n_protects_old_verified_backups():
    backups = [entry(d) for d in (40, 50, 60, 70)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=30, retention_keep=2)
    assert names(keep) == names(backups[:2])
    assert names(delete) == names(backups[2:])


def test_retention_never_deletes_the_newest_verified_even_with_keep_zero():
    backups = [entry(40), entry(50)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=30, retention_keep=0)
    assert names(keep) == names([backups[0]])
    assert names(delete) == names([backups[1]])


def test_retention_unverified_do_not_count_as_kept_good_backups():
    # newest three are unverified and old: they go, the older verified one stays as last good
    backups = [entry(31, verified=False), entry(32, verified=False), entry(33, verified=False), entry(90)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=30, retention_keep=1)
    assert names(keep) == names([backups[3]])
    assert names(delete) == names(backups[:3])


def test_retention_young_unverified_backups_are_kept():
    backups = [entry(1, verified=False), entry(2, verified=False)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=30, retention_keep=7)
    assert delete == []
    assert len(keep) == 2


def test_retention_only_unverified_old_backups_all_go():
    backups = [entry(40, verified=False), entry(41, verified=False)]
    delete, _kept = bf.select_prune(backups, NOW, retention_days=30, retention_keep=7)
    assert names(delete) == names(backups)


def test_retention_days_zero_keeps_protected_new_backup():
    backups = [entry(0, verified=False), entry(0.5)]
    delete, keep = bf.select_prune(backups, NOW, retention_days=0, retention_keep=0,
                                   protect=(backups[0]["name"],))
    assert names(keep) == names(backups)
    assert delete == []


def test_retention_exact_cutoff_is_kept():
    backups = [entry(30), entry(30, hours=1), entry(1)]
    delete, _kept = bf.select_prune(backups, NOW, retention_days=30, retention_keep=1)
    assert names(delete) == names([backups[1]])


def test_retention_never_protects_the_dump_of_an_emptied_target():
    empty = dict(entry(40), purpose="dropped_empty_target")
    real = [entry(50), entry(60)]
    delete, keep = bf.select_prune([empty] + real, NOW, retention_days=30, retention_keep=1)
    # The newest real backup keeps the protected place; the empty dump ages out.
    assert names(keep) == names(real[:1]) and names(delete) == names([empty, real[1]])


def test_retention_refuses_negative_values():
    with pytest.raises(bf.BackupError):
        bf.select_prune([], NOW, retention_days=-1, retention_keep=1)


def write_backup(directory, prefix, when, database=None, manifest=True, verified=True, **over):
    name = bf.backup_name(prefix, when, "custom")
    path = Path(directory) / name
    path.write_bytes(b"PGDMP" + b"x" * 100)
    if manifest:
        data = make_manifest(name=name, database=database or prefix, verified_ok=verified, **over)
        Path(str(path) + bf.MANIFEST_SUFFIX).write_text(json.dumps(data))
    return name


def test_scan_backups_recognises_only_ours(tmp_path):
    mine_new = write_backup(tmp_path, "moncabinet", days_ago(1))
    mine_old = write_backup(tmp_path, "moncabinet", days_ago(60), verified=False)
    no_manifest = write_backup(tmp_path, "moncabinet", days_ago(90), manifest=False)
    foreign_tool = write_backup(tmp_path, "moncabinet", days_ago(91), tool="pgbackrest")
    other_db_same_prefix = write_backup(tmp_path, "moncabinet", days_ago(92), database="qadhya")
    write_backup(tmp_path, "qadhya", days_ago(93))  # other prefix: not even looked at
    (tmp_path / "notes.txt").write_text("operator notes")
    (tmp_path / "moncabinet.sql.gz").write_bytes(b"\x1f\x8b hand made")
    os.symlink(tmp_path / mine_new, tmp_path / bf.backup_name("moncabinet", days_ago(100), "custom"))

    ours, ignored = bf.scan_backups(str(tmp_path), database="moncabinet", prefix="moncabinet")
    assert [e["name"] for e in ours] == [mine_new, mine_old]
    assert [e["verified"] for e in ours] == [True, False]
    assert no_manifest in ignored and foreign_tool in ignored and other_db_same_prefix in ignored
    assert len(ignored) == 4  # + the symlink


def test_scan_backups_manifest_for_another_file_is_not_ours(tmp_path):
    name = write_backup(tmp_path, "db", days_ago(40))
    other = bf.backup_name("db", days_ago(41), "custom")
    (tmp_path / other).write_bytes(b"PGDMP")
    # a copy of a valid manifest renamed next to a foreign file
    (tmp_path / (other + bf.MANIFEST_SUFFIX)).write_text((tmp_path / (name + bf.MANIFEST_SUFFIX)).read_text())
    ours, ignored = bf.scan_backups(str(tmp_path), database="db", prefix="db")
    assert [e["name"] for e in ours] == [name]
    assert ignored == [other]


def test_scan_backups_missing_directory(tmp_path):
    assert bf.scan_backups(str(tmp_path / "nope"), "db", "db") == ([], [])


def test_delete_backup_removes_file_and_manifest_only(tmp_path):
    name = write_backup(tmp_path, "db", days_ago(40))
    keep = write_backup(tmp_path, "db", days_ago(1))
    bf.delete_backup(str(tmp_path / name))
    assert sorted(os.listdir(tmp_path)) == sorted([keep, keep + bf.MANIFEST_SUFFIX])


# --------------------------------------------------------------------------
# free space
# --------------------------------------------------------------------------


def test_free_space_enough():
    result = bf.free_space_check("/backups", free=400 * MB, db_size=60 * MB, margin_mb=256)
    assert result["ok"] is True
    assert result["need_mb"] == 316.0
    assert "msg" not in result


def test_free_space_refusal_message():
    result = bf.free_space_check("/x", free=12 * MB + 5, db_size=60 * MB, margin_mb=20)
    assert result["ok"] is False
    assert result["msg"] == (
        "not enough free space in /x: 12 MB free, need ~80 MB (database size 60 MB + margin 20 MB); "
        "free space or choose another dest_dir"
    )


def test_free_space_exact_boundary_and_zero_margin():
    assert bf.free_space_check("/x", free=60 * MB, db_size=60 * MB, margin_mb=0)["ok"] is True
    assert bf.free_space_check("/x", free=60 * MB - 1, db_size=60 * MB, margin_mb=0)["ok"] is False


def test_free_bytes_of_a_missing_dir_uses_its_parent(tmp_path):
    assert bf.free_bytes(str(tmp_path / "a" / "b")) == bf.free_bytes(str(tmp_path))


# --------------------------------------------------------------------------
# streaming writer
# --------------------------------------------------------------------------


def test_stream_to_partial_writes_private_file_and_hash(tmp_path):
    chunks = [b"a" * (1 << 20), b"", b"b" * 10]
    partial, nbytes, sha = bf.stream_to_partial(str(tmp_path), "db-x.dump", iter(chunks))
    assert Path(partial).name.startswith(".db-x.dump.partial-")
    assert nbytes == (1 << 20) + 10
    assert sha == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert stat.S_IMODE(os.stat(partial).st_mode) == 0o600
    final = str(tmp_path / "db-x.dump")
    bf.commit_partial(partial, final)
    assert os.listdir(tmp_path) == ["db-x.dump"]
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o600


def test_stream_to_partial_mode_ignores_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        partial, _nbytes, _digest = bf.stream_to_partial(str(tmp_path), "f", [b"x"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(partial).st_mode) == 0o600


def test_stream_error_mid_way_removes_partial(tmp_path):
    (tmp_path / "db-old.dump").write_bytes(b"earlier backup")

    def chunks():
        yield b"x" * 100
        raise bf.BackupError("pg_dump died")

    with pytest.raises(bf.BackupError, match="pg_dump died"):
        bf.stream_to_partial(str(tmp_path), "db-new.dump", chunks())
    assert os.listdir(tmp_path) == ["db-old.dump"]
    assert (tmp_path / "db-old.dump").read_bytes() == b"earlier backup"


class FullDisk:
    """A file object that fills up after `room` bytes, like a full filesystem."""

    def __init__(self, raw, room, on_flush=False):
        self.raw, self.room, self.on_flush = raw, room, on_flush

    def write(self, data):
        if not self.on_flush and len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.raw.write(data)

    def flush(self):
        if self.on_flush:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("on_flush", [False, True])
def test_enospc_removes_partial_and_says_disk_full(tmp_path, on_flush):
    (tmp_path / "db-old.dump").write_bytes(b"earlier backup")
    with pytest.raises(bf.BackupError) as info:
        bf.stream_to_partial(str(tmp_path), "db-new.dump", iter([b"y" * 1000] * 5),
                             wrap=lambda raw: FullDisk(raw, 2500, on_flush))
    msg = str(info.value)
    assert msg.startswith("disk full while writing the backup in %s" % tmp_path)
    assert "No space left on device" in msg and "choose another dest_dir" in msg
    assert "\n" not in msg
    assert info.value.details["errno"] == errno.ENOSPC
    assert os.listdir(tmp_path) == ["db-old.dump"]


def test_edquot_is_reported_like_enospc(tmp_path):
    class Quota(FullDisk):
        def write(self, data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(bf.BackupError, match="disk full"):
        bf.stream_to_partial(str(tmp_path), "f", [b"x"], wrap=lambda raw: Quota(raw, 0))
    assert os.listdir(tmp_path) == []


def test_other_os_errors_propagate_and_clean_up(tmp_path):
    class Broken(FullDisk):
        def write(self, data):
            raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as info:
        bf.stream_to_partial(str(tmp_path), "f", [b"x"], wrap=lambda raw: Broken(raw, 0))
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path) == []


def test_partial_writes_are_completed(tmp_path):
    class Dribble:
        def __init__(self, raw):
            self.raw = raw

        def write(self, data):
            return self.raw.write(bytes(data[:3]))

        def flush(self):
            pass

    partial, nbytes, _digest = bf.stream_to_partial(str(tmp_path), "f", [b"0123456789"], wrap=Dribble)
    assert Path(partial).read_bytes() == b"0123456789" and nbytes == 10


def test_commit_partial_never_replaces_an_existing_backup(tmp_path):
    final = tmp_path / "db-x.dump"
    final.write_bytes(b"precious")
    partial, _nbytes, _digest = bf.stream_to_partial(str(tmp_path), "db-x.dump", [b"new"])
    with pytest.raises(bf.BackupError, match="already exists"):
        bf.commit_partial(partial, str(final))
    assert final.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["db-x.dump"]


def test_write_atomic_replaces_manifest(tmp_path):
    bf.write_atomic(str(tmp_path), "m.json", b"one")
    bf.write_atomic(str(tmp_path), "m.json", b"two")
    assert (tmp_path / "m.json").read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["m.json"]
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o600


def test_ensure_dir_creates_0700_and_respects_check_mode(tmp_path):
    target = tmp_path / "a" / "backups"
    assert bf.ensure_dir(str(target), check_mode=True) is True
    assert not target.exists()
    assert bf.ensure_dir(str(target)) is True
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert bf.ensure_dir(str(target)) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(bf.BackupError, match="not a directory"):
        bf.ensure_dir(str(tmp_path / "file"))


# --------------------------------------------------------------------------
# compression and structure
# --------------------------------------------------------------------------

SQL = b"--\n-- PostgreSQL database dump\n--\nCREATE TABLE t();\n" + b"-- filler\n" * 5000 + \
    b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n"


def test_gzip_chunks_produce_standard_gzip_and_track_marker():
    tail = bf.Tail()
    data = b"".join(bf.gzip_chunks(iter([SQL[:1000], SQL[1000:]]), 6, tail))
    assert gzip.decompress(data) == SQL
    assert tail.total == len(SQL) and tail.complete()


def test_tail_without_marker_is_incomplete():
    tail = bf.Tail()
    for part in (SQL[:100], SQL[100:-200]):
        tail.feed(part)
    assert not tail.complete()


def test_gunzip_chunks_detects_damage():
    data = bytearray(gzip.compress(SQL))
    assert b"".join(bf.gunzip_chunks([bytes(data)])) == SQL
    with pytest.raises(bf.BackupError, match="truncated"):
        list(bf.gunzip_chunks([bytes(data[: len(data) // 2])]))
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(bf.BackupError, match="corrupt"):
        list(bf.gunzip_chunks([bytes(flipped)]))
    with pytest.raises(bf.BackupError, match="trailing"):
        list(bf.gunzip_chunks([bytes(data) + b"junk"]))


def test_compare_counts_names_tables():
    expected = {"knowledge_base": 581, "users": 2, "gone": 1}
    diffs = bf.compare_counts(expected, {"knowledge_base": 580, "users": 2, "extra": 0})
    assert diffs == [("extra", None, 0), ("gone", 1, None), ("knowledge_base", 581, 580)]
    text = bf.describe_diffs(diffs)
    assert "table knowledge_base: manifest 581 rows, restored 580 rows" in text
    assert "table gone: manifest 1 rows, restored absent" in text
    assert bf.compare_counts({"a": 1}, {"a": 1}) == []


def test_check_results_rc_and_error_lines():
    ok = [("pg_dump", 0, "", ["pg_dump"])]
    assert bp.check_results(ok, "dump") == []
    with pytest.raises(bf.BackupError, match=r"rc=1: pg_dump: error: connection .* failed"):
        bp.check_results([("pg_dump", 1, "pg_dump: error: connection to server failed\n", ["x"])], "dump")
    with pytest.raises(bf.BackupError, match="although it exited 0"):
        bp.check_results([("pg_dump", 0, "pg_dump: error: query failed: ERROR: x\n", ["x"])], "dump")
    warnings = bp.check_results([("zstd", 0, "zstd: note: something\n", ["x"])], "dump")
    assert warnings == ["zstd: zstd: note: something"]


# --------------------------------------------------------------------------
# the dump pipeline with a stand-in for `docker exec`
# --------------------------------------------------------------------------


class FakeModule:
    check_mode = False

    def __init__(self, tmp_path, script):
        self.params = dict(
            db_container="db", login_user="u", login_password="s3cret", docker_bin="docker",
            login_port=5432, connect_timeout=5, maintenance_db="postgres",
        )
        self.script = script
        self.warnings = []

    def get_bin_path(self, name, required=False):
        return "/bin/" + name

    def warn(self, msg):
        self.warnings.append(msg)


def fake_exec(script):
    """exec_argv stand-in: runs `script` locally with the requested argv in $@."""
    def exec_argv(module, container, argv, env=None, user=None, interactive=False):
        secrets = {k: v for k, v in (env or {}).items() if v is not None}
        return ["sh", "-c", script, "fake-docker"] + list(argv), secrets
    return exec_argv


def run_dump(monkeypatch, tmp_path, script, fmt="custom"):
    monkeypatch.setattr(bp, "exec_argv", fake_exec(script))
    tools = bp.PgTools(FakeModule(tmp_path, script), "db", "u", "s3cret")
    return tools.dump("moncabinet", fmt, 6, "00000003-1", str(tmp_path), "moncabinet-x.dump", None)


def test_dump_success_returns_partial_and_cmd_without_password(monkeypatch, tmp_path):
    partial, nbytes, sha, cmd, warnings = run_dump(
        monkeypatch, tmp_path, 'test "$PGPASSWORD" = s3cret || exit 9; printf "PGDMP%0100d" 0')
    data = Path(partial).read_bytes()
    assert data.startswith(b"PGDMP") and nbytes == len(data) == 105
    assert sha == hashlib.sha256(data).hexdigest()
    assert "s3cret" not in " ".join(cmd[3:])  # what follows the stand-in script
    assert "--snapshot=00000003-1" in cmd and "--format=custom" in cmd and "--compress=6" in cmd
    assert warnings == []


@pytest.mark.parametrize("script,match", [
    ('printf "PGDMP%0100d" 0; echo "pg_dump: error: lost connection" >&2; exit 1', "rc=1"),
    ('printf "PGDMP%0100d" 0; echo "pg_dump: error: query failed" >&2', "although it exited 0"),
    ('printf "PGDMP"', "without a valid custom header"),
    ('printf "NOTADUMP%0100d" 0', "without a valid custom header"),
])
def test_dump_failures_leave_no_file(monkeypatch, tmp_path, script, match):
    with pytest.raises(bf.BackupError, match=match):
        run_dump(monkeypatch, tmp_path, script)
    assert os.listdir(tmp_path) == []


def test_plain_dump_without_completion_marker_fails(monkeypatch, tmp_path):
    script = 'printf -- "--\\n-- PostgreSQL database dump\\n--\\nCREATE TABLE t();\\n%%0200d" 0'
    with pytest.raises(bf.BackupError, match="ended without '-- PostgreSQL database dump complete'"):
        run_dump(monkeypatch, tmp_path, script, fmt="plain_gzip")
    assert os.listdir(tmp_path) == []


def test_plain_gzip_dump_succeeds_with_marker(monkeypatch, tmp_path):
    script = 'printf -- "--\\nCREATE TABLE t();\\n--\\n-- PostgreSQL database dump complete\\n--\\n"'
    partial, _nbytes, _digest, cmd, _err = run_dump(monkeypatch, tmp_path, script, fmt="plain_gzip")
    assert gzip.decompress(Path(partial).read_bytes()).endswith(b"dump complete\n--\n")
    assert "--format=plain" in cmd


# --------------------------------------------------------------------------
# verification of files against their manifest (no database needed)
# --------------------------------------------------------------------------


def backup_with_manifest(tmp_path, payload):
    name = bf.backup_name("db", NOW, "plain_gzip")
    path = tmp_path / name
    path.write_bytes(payload)
    manifest = make_manifest(name=name, database="db", bytes=len(payload),
                             sha256=hashlib.sha256(payload).hexdigest())
    (tmp_path / (name + bf.MANIFEST_SUFFIX)).write_text(json.dumps(manifest))
    return path, manifest


def runner_for(tmp_path, **params):
    module = FakeModule(tmp_path, "")
    module.params.update(dict(action="verify", verify="structure"), **params)
    return bk.BackupRunner(module)


def test_verify_file_levels_on_a_good_gzip_backup(tmp_path):
    path, manifest = backup_with_manifest(tmp_path, gzip.compress(SQL))
    runner = runner_for(tmp_path)
    result = runner._verify_file(str(path), manifest, "structure")
    assert result["ok"] is True and result["details"]["checked"] == "structure"
    assert result["details"]["sql_bytes"] == len(SQL)
    assert runner._verify_file(str(path), manifest, "none")["details"]["checked"] == "none"


def test_verify_file_flipped_byte_fails_checksum_then_structure_is_not_trusted(tmp_path):
    data = bytearray(gzip.compress(SQL))
    path, manifest = backup_with_manifest(tmp_path, bytes(data))
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for level in ("checksum", "structure", "restore"):
        result = runner_for(tmp_path)._verify_file(str(path), manifest, level)
        assert result["ok"] is False
        assert result["details"]["failed_level"] == "checksum"
        assert result["details"]["error"].startswith("checksum mismatch for %s" % path)


def test_verify_file_truncated_sql_fails_structure(tmp_path):
    path, manifest = backup_with_manifest(tmp_path, gzip.compress(SQL[:-300]))
    result = runner_for(tmp_path)._verify_file(str(path), manifest, "structure")
    assert result["ok"] is False and result["details"]["failed_level"] == "structure"
    assert "without '-- PostgreSQL database dump complete'" in result["details"]["error"]


def test_verify_action_refuses_files_without_our_manifest(tmp_path):
    path, _manifest = backup_with_manifest(tmp_path, gzip.compress(SQL))
    foreign = tmp_path / "db-20260101T000000Z.sql.gz"
    foreign.write_bytes(gzip.compress(SQL))
    with pytest.raises(bf.BackupError, match="missing or unreadable"):
        runner_for(tmp_path, path=str(foreign)).verify()
    # a manifest path is accepted in place of the backup path
    result = runner_for(tmp_path, path=str(path) + bf.MANIFEST_SUFFIX).verify()
    assert result["changed"] is False and result["verified"]["ok"] is True
    assert result["path"] == str(path)


def test_compare_contents_names_the_table_whose_content_differs():
    counts = {"knowledge_base": 580, "users": 2}
    sums = {"knowledge_base": "580:-12", "users": "2:7"}
    assert bf.compare_contents(counts, dict(counts), sums, dict(sums)) == []
    diffs = bf.compare_contents(counts, dict(counts), sums, dict(sums, knowledge_base="580:99"))
    assert diffs == [("knowledge_base", 580, 580, "580:-12", "580:99")]
    text = bf.describe_diffs(diffs)
    assert text == ("table knowledge_base: 580 rows in both, content differs "
                    "(checksum manifest 580:-12, restored 580:99)")
    # A count that differs is said as a count; without checksums only counts are compared.
    diffs = bf.compare_contents(counts, dict(counts, users=3), sums, dict(sums, users="3:1"))
    assert diffs == [("users", 2, 3)]
    assert bf.compare_contents(counts, dict(counts), sums, None) == []


def test_manifest_checksums_only_when_computed_the_same_way():
    from ansible_collections.qadhya.dbops.plugins.module_utils import _backup as runner

    method = runner.CHECKSUM_METHOD
    assert "TimeZone=UTC" in method and "hashtext" in method
    written = {"checksums": {"a": "1:2"}, "checksum_method": method}
    assert bf.manifest_checksums(written, method) == {"a": "1:2"}
    # Written before 0.2.0, with content_checksums=false, or by another method: counts only.
    assert bf.manifest_checksums({"row_counts": {"a": 1}}, method) is None
    assert bf.manifest_checksums({"checksums": None, "checksum_method": None}, method) is None
    assert bf.manifest_checksums({"checksums": {"a": "1:2"}, "checksum_method": "other"}, method) is None


def test_progress_file_is_written_atomically_and_never_fails_the_backup(tmp_path, monkeypatch):
    from ansible_collections.qadhya.dbops.plugins.module_utils import _backup as runner

    status = tmp_path / ".db.backup-progress.json"
    progress = runner.Progress(str(status), "db")
    progress.update(step="dumping", force=True)
    progress.dumped(3 * bf.MB)  # within a second of the last write: not rewritten
    assert json.loads(status.read_text())["bytes"] == 0
    progress.update(nbytes=5 * bf.MB, force=True)
    written = json.loads(status.read_text())
    assert written["step"] == "dumping" and written["bytes"] == 5 * bf.MB and written["database"] == "db"
    assert oct(status.stat().st_mode & 0o777) == "0o600"

    # A full disk (BackupError) or any OSError turns the status off, never the backup.
    def full(*_args, **_kwargs):
        raise bf.BackupError("disk full")
    monkeypatch.setattr(runner, "write_atomic", full)
    progress.update(step="verifying (structure)")
    assert progress.off is True and json.loads(status.read_text())["step"] == "dumping"
    progress.remove()
    assert not status.exists()
