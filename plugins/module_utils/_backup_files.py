# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup files, their manifests and retention (private; no process, no SQL).

A file is ours only when `<file>.manifest.json` next to it says so
(`tool: qadhya.dbops`, matching file name); retention and listing never
touch any other file. Files are written under a hidden partial name created
0600, fsynced, and only then given their final name.

Used by the backup runner (_backup.py), the pg_dump pipelines
(_backup_process.py) and db_backup_info.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import secrets
import zlib

UTC = datetime.timezone.utc  # noqa: UP017
TOOL = "qadhya.dbops"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 1 << 20
MB = 1 << 20
EXTENSIONS = {"custom": "dump", "plain_gzip": "sql.gz", "plain_zstd": "sql.zst"}
FORMAT_OF_EXT = {ext: fmt for fmt, ext in EXTENSIONS.items()}
MAGIC = {"custom": b"PGDMP", "plain_gzip": b"\x1f\x8b", "plain_zstd": b"\x28\xb5\x2f\xfd"}
LEVELS = {"custom": (0, 9), "plain_gzip": (0, 9), "plain_zstd": (1, 19)}
COMPLETION_MARKER = b"-- PostgreSQL database dump complete"
# Newer minor releases print `\unrestrict <key>` after the marker: look for
# it near the end rather than at the very end.
TAIL_BYTES = 4096
# Smaller than any real dump (pg_dump writes a header of several hundred bytes).
MIN_BYTES = 64
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
NAME_RE = re.compile(
    r"^(?P<prefix>.+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>dump|sql\.gz|sql\.zst)$", re.DOTALL
)
# Why a backup was taken (manifest `purpose`). The dump of an empty target
# taken just before it is dropped is kept for the record, but it is never
# the backup that vouches for the live database of that name.
PURPOSES = ("manual", "scheduled", "pre_consolidation", "pre_migration", "dropped_empty_target")
NEVER_NEWEST = ("dropped_empty_target",)


class BackupError(Exception):
    """A backup step failed; the message is one line, safe to show."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


# --------------------------------------------------------------------------
# names


def utc_now():
    return datetime.datetime.now(UTC)


def iso(when):
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_prefix(database):
    """A file-name-safe prefix from a database name (any character allowed)."""
    prefix = database.replace("/", "_").replace("\\", "_").replace("\x00", "_")
    if prefix.startswith("."):
        prefix = "_" + prefix[1:]
    return prefix


def validate_prefix(prefix):
    if not prefix or "/" in prefix or "\x00" in prefix or prefix.startswith("."):
        raise BackupError(
            "name_prefix %r cannot be used in a file name (empty, '/', NUL or leading '.'); "
            "choose another name_prefix" % prefix
        )
    if len(prefix.encode("utf-8")) > 180:
        raise BackupError("name_prefix is longer than 180 bytes; choose a shorter name_prefix")
    return prefix


def backup_name(prefix, when, fmt):
    """`<prefix>-<UTC YYYYmmddTHHMMSSZ>.<ext>`."""
    return "%s-%s.%s" % (prefix, when.astimezone(UTC).strftime(STAMP_FORMAT),
                         EXTENSIONS[fmt])


def parse_name(name):
    """{prefix, when, format} for a backup file name, or None."""
    match = NAME_RE.match(name)
    if not match:
        return None
    try:
        when = datetime.datetime.strptime(match.group("stamp"), STAMP_FORMAT)
    except ValueError:
        return None
    return dict(
        prefix=match.group("prefix"),
        when=when.replace(tzinfo=UTC),
        format=FORMAT_OF_EXT[match.group("ext")],
    )


def manifest_path(path):
    return path + MANIFEST_SUFFIX


def key_candidates(key):
    """Every (schema, table) a manifest key can stand for (names may hold dots)."""
    pairs = [("public", key)]
    pairs += [(key[:i], key[i + 1:]) for i, char in enumerate(key) if char == "."]
    return pairs

# --------------------------------------------------------------------------
# manifests


def build_manifest(
    database, server_version, pg_dump_version, fmt, level, file_name, nbytes, sha256,
    row_counts, started_at, finished_at, host, container=None, encoding=None,
    prefix=None, verified=None, for_database=None, purpose="manual", partitioned_tables=(),
    checksums=None, checksum_method=None,
):
    """Manifest content. Only facts about the dump: never a password or a DSN.

    `database` is the database dumped; `for_database` the name its data
    serves (a consolidation dumps the source for the target name).
    """
    return dict(
        tool=TOOL,
        manifest_version=MANIFEST_VERSION,
        database=database,
        for_database=for_database or database,
        purpose=purpose,
        name_prefix=prefix if prefix is not None else default_prefix(database),
        server_version=server_version,
        pg_dump_version=pg_dump_version,
        encoding=encoding,
        format=fmt,
        compression=compression_info(fmt, level),
        file=file_name,
        bytes=int(nbytes),
        sha256=sha256,
        row_counts=dict(row_counts),
        # Per table "rows:sum" of a hash of each row's text, from the dump's own
        # snapshot (None when the backup skipped them: a restore then compares counts).
        checksums=dict(checksums) if checksums is not None else None,
        checksum_method=checksum_method,
        # Their rows are dumped as their partitions' TABLE DATA, not their own.
        partitioned_tables=sorted(partitioned_tables),
        started_at=iso(started_at),
        finished_at=iso(finished_at),
        duration_s=round((finished_at - started_at).total_seconds(), 3),
        verified=verified or dict(level="none", ok=None, at=None),
        host=host,
        container=container,
    )


def compression_info(fmt, level):
    method = {"custom": "pg_dump-custom", "plain_gzip": "gzip", "plain_zstd": "zstd"}[fmt]
    return dict(method=method, level=int(level))


def manifest_problem(manifest, file_name, database=None, prefix=None):
    """None when `manifest` is one of ours for `file_name`, else why not."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("tool") != TOOL:
        return "not written by %s" % TOOL
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return "unknown manifest_version %r" % manifest.get("manifest_version")
    if manifest.get("file") != file_name:
        return "describes %r, not %r" % (manifest.get("file"), file_name)
    parsed = parse_name(file_name)
    if parsed is None or manifest.get("format") != parsed["format"]:
        return "format does not match the file name"
    if database is not None and manifest.get("database") != database:
        return "belongs to database %r" % manifest.get("database")
    if prefix is not None and parsed["prefix"] != prefix:
        return "has another name prefix"
    if not isinstance(manifest.get("sha256"), str) or not isinstance(manifest.get("bytes"), int):
        return "has no sha256/bytes"
    return None


def load_manifest(path):
    """Parsed `<path>.manifest.json`, or None when missing/unreadable (never follows links)."""
    mpath = manifest_path(path)
    try:
        if os.path.islink(mpath) or not os.path.isfile(mpath):
            return None
        with open(mpath, "rb") as handle:
            return json.loads(handle.read(1 << 22).decode("utf-8"))
    except (OSError, ValueError):
        return None


def is_verified(manifest):
    verified = manifest.get("verified") or {}
    return verified.get("ok") is True and verified.get("level") not in (None, "none")


def served_database(manifest):
    """The database name a backup's data serves (manifests before 0.2.0 name only `database`)."""
    return manifest.get("for_database") or manifest.get("database")


def total_rows(manifest):
    counts = manifest.get("row_counts") or {}
    return sum(int(v) for v in counts.values() if isinstance(v, int))


def missing_table_data(toc_lines, row_counts, partitioned=()):
    """Manifest tables without a `TABLE DATA` entry in a `pg_restore --list` listing.

    A partitioned table has none of its own (its partitions carry the rows).
    """
    data_lines = [line for line in toc_lines if " TABLE DATA " in line]
    missing = []
    for key in row_counts or {}:
        if key in partitioned:
            continue
        wanted = [" TABLE DATA %s %s " % pair for pair in key_candidates(key)]
        if not any(w in line for line in data_lines for w in wanted):
            missing.append(key)
    return missing


# --------------------------------------------------------------------------
# listing (db_backup_info)


def backup_problems(manifest, size, database, sha256=None):
    """Why a backup of ours cannot vouch for `database` ([] when it can).

    `size` is the file's size on disk (None: missing); `sha256` the digest
    just recomputed, when asked; `database` None takes any database.
    """
    problems = []
    if database is not None and database not in (manifest.get("database"), served_database(manifest)):
        problems.append("is a backup of %r, not of %r" % (manifest.get("database"), database))
    if size is None:
        problems.append("backup file is missing")
    elif size != manifest.get("bytes"):
        problems.append("file has %d bytes, manifest says %s" % (size, manifest.get("bytes")))
    if sha256 is not None and sha256 != manifest.get("sha256"):
        problems.append("sha256 differs from the manifest (file damaged)")
    if not is_verified(manifest):
        verified = manifest.get("verified") or {}
        problems.append("not verified" if verified.get("ok") is None else "failed verification")
    return problems


def describe_entry(directory, name, manifest, size, mode, problems, now, checksummed):
    """One element of db_backup_info's `backups`."""
    parsed = parse_name(name)
    path = os.path.join(directory, name)
    return dict(
        name=name,
        path=path,
        manifest_path=manifest_path(path),
        database=manifest.get("database"),
        for_database=served_database(manifest),
        purpose=manifest.get("purpose") or "unknown",
        taken_at=manifest.get("finished_at") or "",
        stamp=parsed["when"].strftime(STAMP_FORMAT),
        age_h=round((now - parsed["when"]).total_seconds() / 3600, 1),
        bytes=manifest.get("bytes"),
        size_on_disk=size,
        mode=mode,
        sha256=manifest.get("sha256"),
        sha256_checked=checksummed,
        format=manifest.get("format"),
        verified=manifest.get("verified") or {},
        row_counts=manifest.get("row_counts") or {},
        total_rows=total_rows(manifest),
        ok=not problems,
        problems=problems,
    )


def select_newest(entries, database):
    """The newest entry that vouches for live `database`, or {}.

    `entries` are describe_entry() results, newest first. A backup counts
    when it was taken of that database or for it (consolidation), is ours,
    complete and verified; a dump of an empty target taken before its drop
    never counts, whatever its time stamp.
    """
    for entry in entries:
        if not entry["ok"] or entry["purpose"] in NEVER_NEWEST:
            continue
        if database is None or database in (entry["database"], entry["for_database"]):
            return entry
    return {}


def list_backups(directory, database, checksum=False, now=None, only=None):
    """(entries newest first, ignored names) of the backups of `database` in `directory`.

    Every file whose name is a backup name and whose manifest is ours is
    read; those dumped from `database` or for it are listed, each checked
    (file present, size, verified, and the sha256 when `checksum`). Files
    named like backups without a manifest of ours are `ignored`. `only`
    restricts the listing to one file name; `database` None takes any.
    """
    now = now or utc_now()
    entries, ignored = [], []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return entries, ignored
    if only is not None:
        names = [n for n in names if n in (only, only + MANIFEST_SUFFIX)]
    present = set(names)
    for name in sorted(present):
        if name.endswith(MANIFEST_SUFFIX):
            name = name[: -len(MANIFEST_SUFFIX)]
            if name in present:  # listed with its backup file
                continue
        if parse_name(name) is None:
            continue
        path = os.path.join(directory, name)
        manifest = load_manifest(path)
        if manifest_problem(manifest, name) is not None:
            ignored.append(name)
            continue
        if database is not None and database not in (manifest.get("database"), served_database(manifest)):
            continue
        size = mode = None
        if not os.path.islink(path) and os.path.isfile(path):
            info = os.stat(path)
            size, mode = info.st_size, "%04o" % (info.st_mode & 0o7777)
        sha = None
        if checksum and size is not None and size == manifest.get("bytes"):
            sha = sha256_file(path)[0]
        problems = backup_problems(manifest, size, database, sha)
        entries.append(describe_entry(directory, name, manifest, size, mode, problems, now,
                                      sha is not None))
    entries.sort(key=lambda e: (e["stamp"], e["name"]), reverse=True)
    return entries, sorted(set(ignored))


# --------------------------------------------------------------------------
# retention


def scan_backups(directory, database=None, prefix=None):
    """(ours, ignored): our backups of database/prefix in `directory`, newest first.

    Each of ours is {name, path, when, verified, bytes}; `ignored` lists
    the names that look like backups of this prefix but have no valid
    manifest of ours (never touched).
    """
    ours, ignored = [], []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return ours, ignored
    for name in names:
        parsed = parse_name(name)
        if parsed is None or (prefix is not None and parsed["prefix"] != prefix):
            continue
        path = os.path.join(directory, name)
        if os.path.islink(path) or not os.path.isfile(path):
            ignored.append(name)
            continue
        manifest = load_manifest(path)
        if manifest_problem(manifest, name, database=database, prefix=prefix) is not None:
            ignored.append(name)
            continue
        ours.append(dict(
            name=name, path=path, when=parsed["when"], verified=is_verified(manifest),
            bytes=manifest.get("bytes"), purpose=manifest.get("purpose"),
        ))
    ours.sort(key=lambda e: (e["when"], e["name"]), reverse=True)
    return ours, sorted(ignored)


def select_prune(entries, now, retention_days, retention_keep, protect=()):
    """(delete, keep) among our backups `entries` (dicts with name, when, verified, purpose).

    Deletes backups older than `retention_days`, except: the newest
    `retention_keep` verified backups, the newest verified backup (always)
    and any name in `protect`. The dump of an emptied target is no backup
    of the live data, so it never takes one of those protected places.
    """
    if retention_days < 0 or retention_keep < 0:
        raise BackupError("retention_days and retention_keep must be >= 0; fix the option values")
    ordered = sorted(entries, key=lambda e: (e["when"], e["name"]), reverse=True)
    verified = [e["name"] for e in ordered if e["verified"] and e.get("purpose") not in NEVER_NEWEST]
    keep_names = set(verified[:max(retention_keep, 1)]) | set(protect)
    cutoff = now - datetime.timedelta(days=retention_days)
    delete, keep = [], []
    for entry in ordered:
        if entry["name"] not in keep_names and entry["when"] < cutoff:
            delete.append(entry)
        else:
            keep.append(entry)
    return delete, keep


def delete_backup(path):
    """Remove one of our backups and its manifest (backup first)."""
    for victim in (path, manifest_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(victim)
    fsync_dir(os.path.dirname(path))


# --------------------------------------------------------------------------
# free space


def existing_ancestor(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path):
    stats = os.statvfs(existing_ancestor(path))
    return stats.f_bavail * stats.f_frsize


def free_space_check(directory, free, db_size, margin_mb):
    """Decide whether a dump of a `db_size`-byte database fits in `directory`."""
    need = int(db_size) + int(margin_mb) * MB
    result = dict(
        ok=free >= need,
        directory=directory,
        free_mb=round(free / MB, 1),
        need_mb=round(need / MB, 1),
        database_size_mb=round(db_size / MB, 1),
        margin_mb=int(margin_mb),
    )
    if not result["ok"]:
        result["msg"] = (
            "not enough free space in %s: %d MB free, need ~%d MB (database size %d MB + margin %d MB); "
            "free space or choose another dest_dir"
            % (directory, free // MB, -(-need // MB), -(-int(db_size) // MB), int(margin_mb))
        )
    return result


# --------------------------------------------------------------------------
# files


def ensure_dir(path, check_mode=False):
    """Create `path` 0700 when missing; returns True when it was (or would be) created."""
    if os.path.isdir(path):
        return False
    if os.path.lexists(path):
        raise BackupError("%s exists and is not a directory; choose another directory" % path)
    if not check_mode:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def fsync_dir(directory):
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _write_all(out, data):
    view = memoryview(data)
    while len(view):
        written = out.write(view)
        if written is None:  # buffered objects write everything or raise
            written = len(view)
        view = view[written:]


def disk_full_error(exc, directory, written, option="dest_dir"):
    return BackupError(
        "disk full while writing the backup in %s (%s after %.1f MB); the partial file was removed "
        "and earlier backups are untouched; free space in %s or choose another %s"
        % (directory, os.strerror(exc.errno), written / MB, directory, option),
        errno=exc.errno,
    )


def stream_to_partial(directory, final_name, chunks, wrap=None, option="dest_dir"):
    """Write `chunks` to `<directory>/.<final_name>.partial-<random>` (0600).

    Returns (partial_path, bytes, sha256 hex). On any failure the partial
    file is removed and the error re-raised (ENOSPC/EDQUOT as BackupError).
    `wrap` lets tests put a fake file object in front of the real one.
    """
    partial = os.path.join(directory, ".%s.partial-%s" % (final_name, secrets.token_hex(6)))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(partial, flags, 0o600)
    hasher = hashlib.sha256()
    written = 0
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as raw:
            out = wrap(raw) if wrap else raw
            for chunk in chunks:
                if not chunk:
                    continue
                _write_all(out, chunk)
                hasher.update(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(raw.fileno())
    except BaseException as exc:
        remove_quietly(partial)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(exc, directory, written, option) from None
        raise
    return partial, written, hasher.hexdigest()


def remove_quietly(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def commit_partial(partial, final):
    """Give `partial` its final name without ever replacing an existing file."""
    directory = os.path.dirname(final)
    try:
        os.link(partial, final)
    except FileExistsError:
        remove_quietly(partial)
        raise BackupError("%s already exists; it was left untouched, run again" % final) from None
    except OSError:
        # Filesystems without hard links (some network mounts): check, then rename.
        if os.path.lexists(final):
            remove_quietly(partial)
            raise BackupError("%s already exists; it was left untouched, run again" % final) from None
        os.rename(partial, final)
    else:
        os.unlink(partial)
    fsync_dir(directory)


def write_atomic(directory, name, data, replace=True):
    """Write bytes to directory/name through a 0600 partial file + rename."""
    partial = stream_to_partial(directory, name, [data])[0]
    final = os.path.join(directory, name)
    if replace:
        os.rename(partial, final)
        fsync_dir(directory)
    else:
        commit_partial(partial, final)
    return final


def manifest_bytes(manifest):
    return (json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def read_chunks(path, size=CHUNK):
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(size)
            if not chunk:
                return
            yield chunk


def sha256_file(path):
    hasher = hashlib.sha256()
    total = 0
    for chunk in read_chunks(path):
        hasher.update(chunk)
        total += len(chunk)
    return hasher.hexdigest(), total


class Tail:
    """Keeps the last TAIL_BYTES of a stream and counts its bytes."""

    def __init__(self):
        self.data = b""
        self.total = 0

    def feed(self, chunk):
        self.total += len(chunk)
        self.data = (self.data + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]

    def complete(self):
        return COMPLETION_MARKER in self.data


def gzip_chunks(chunks, level, tail):
    """Compress a plain SQL stream to gzip in this process.

    Measured on the lab (2 cores, 60 MB of SQL): zlib here 1.9 s against 2.0-2.4 s
    for `pg_dump | gzip` inside the container and 2.2-3.0 s for a second
    `docker exec gzip`; the compression overlaps with pg_dump either way, and
    this keeps the plain SQL in view for the completion marker check.
    """
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        tail.feed(chunk)
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


def gunzip_chunks(chunks):
    """Decompress a single-member gzip stream; raises BackupError when damaged."""
    dec = zlib.decompressobj(31)
    try:
        for chunk in chunks:
            out = dec.decompress(chunk)
            if out:
                yield out
            if dec.eof and dec.unused_data:
                raise BackupError("gzip stream has trailing data after its end")
        out = dec.flush()
        if out:
            yield out
    except zlib.error as exc:
        raise BackupError("gzip data is corrupt (%s)" % exc) from None
    if not dec.eof:
        raise BackupError("gzip stream is truncated (no end of stream)")


def compare_counts(expected, actual):
    """[(table, expected, actual)] for every table whose counts differ (None = missing)."""
    diffs = []
    for table in sorted(set(expected) | set(actual)):
        exp, act = expected.get(table), actual.get(table)
        if exp != act:
            diffs.append((table, exp, act))
    return diffs


def manifest_checksums(manifest, method):
    """The manifest's per-table content checksums when they were computed by `method`, else None
    (a manifest written before 0.2.0, or by a backup that skipped them: counts only)."""
    sums = manifest.get("checksums")
    if isinstance(sums, dict) and sums and manifest.get("checksum_method") == method:
        return sums
    return None


def compare_contents(expected, actual, expected_sums=None, actual_sums=None):
    """compare_counts, and with both checksum maps also every table whose row count is the same but
    whose content checksum is not: (table, expected, actual, expected checksum, actual checksum)."""
    diffs = compare_counts(expected, actual)
    if expected_sums is None or actual_sums is None:
        return diffs
    counted = {diff[0] for diff in diffs}
    for table in sorted(set(expected_sums) | set(actual_sums)):
        exp, act = expected_sums.get(table), actual_sums.get(table)
        if table not in counted and exp != act:
            diffs.append((table, expected.get(table), actual.get(table), exp, act))
    return sorted(diffs, key=lambda diff: diff[0])


def describe_diffs(diffs, limit=5):
    parts = []
    for diff in diffs[:limit]:
        table, exp, act = diff[:3]
        if len(diff) == 5 and exp == act:
            parts.append("table %s: %s rows in both, content differs (checksum manifest %s, restored %s)"
                         % (table, exp, diff[3], diff[4]))
            continue
        exp_s = "absent" if exp is None else "%d rows" % exp
        act_s = "absent" if act is None else "%d rows" % act
        parts.append("table %s: manifest %s, restored %s" % (table, exp_s, act_s))
    if len(diffs) > limit:
        parts.append("and %d more" % (len(diffs) - limit))
    return "; ".join(parts)
