# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup runner of qadhya.dbops.db_backup (private): create, verify, restore, prune.

A backup is one file written by streaming `pg_dump` (run inside the
database container, _backup_process) through this process into a partial
file (_backup_files) that gets its final name only once complete. Row
counts for the manifest are taken in the very snapshot pg_dump uses
(`pg_export_snapshot()` + `pg_dump --snapshot`), with the collection's one
definition of a table (_catalog), so a restore can be compared with them
exactly.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time

from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import (
    COMPLETION_MARKER,
    LEVELS,
    MANIFEST_SUFFIX,
    MB,
    TOOL,
    BackupError,
    backup_name,
    build_manifest,
    commit_partial,
    compare_contents,
    default_prefix,
    delete_backup,
    describe_diffs,
    ensure_dir,
    free_bytes,
    free_space_check,
    iso,
    load_manifest,
    manifest_bytes,
    manifest_checksums,
    manifest_path,
    manifest_problem,
    missing_table_data,
    read_chunks,
    remove_quietly,
    scan_backups,
    select_prune,
    served_database,
    sha256_file,
    stream_to_partial,
    utc_now,
    validate_prefix,
    write_atomic,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._backup_process import PgTools
from ansible_collections.qadhya.dbops.plugins.module_utils._catalog import (
    CHECKSUM_METHOD,
    count_and_checksum,
    count_rows,
    list_relations,
    partitioned_tables,
    table_key,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    Connector,
    ident,
    psycopg2,
    resolve_host,
    sql,
    validate_identifier,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._docker import DockerError
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line
from ansible_collections.qadhya.dbops.plugins.module_utils._lock_wait import (
    is_lock_timeout,
    lock_holders,
    lock_wait_message,
)

# Without psycopg2 the module still verifies checksums and structure.
PG_ERRORS = (psycopg2.Error,) if psycopg2 is not None else ()
PG_PROGRAMMING_ERRORS = (psycopg2.ProgrammingError,) if psycopg2 is not None else ()
# What makes a verification unable to run (rather than find the backup bad).
VERIFY_RUN_ERRORS = PG_ERRORS + (DockerError,)


def table_contents(cur, checksums=True):
    """({key: rows}, {key: "rows:sum"} or None, [partitioned keys]) of every counted table,
    each table read once, in the cursor's current transaction."""
    relations = list_relations(cur)
    partitioned = [table_key(*key) for key in partitioned_tables(relations)]
    if not checksums:
        return ({table_key(*key): rows for key, rows in count_rows(cur, relations).items()}, None,
                partitioned)
    both = count_and_checksum(cur, relations)
    return ({table_key(*key): rows for key, (rows, _sum) in both.items()},
            {table_key(*key): text for key, (_rows, text) in both.items()}, partitioned)


def scratch_name(database):
    """`dbops_verify_<db-ish>_<random>`: always a fresh, valid identifier."""
    dbish = re.sub(r"[^a-z0-9_]+", "_", database.lower()).strip("_")[:30] or "db"
    return "dbops_verify_%s_%s" % (dbish, secrets.token_hex(4))


SCRATCH_NAME = re.compile(r"^dbops_verify_[a-z0-9_]*_[0-9a-f]{8}$")
# Set on a scratch database as soon as it is created: who may still be restoring into it.
SCRATCH_MARK = "qadhya.dbops restore check: pid %d on %s"
SCRATCH_MARK_RE = re.compile(r"^qadhya\.dbops restore check: pid ([0-9]+) on (\S+)$")
SCRATCH_SQL = (
    "SELECT d.datname, (SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datname = d.datname), "
    "pg_catalog.shobj_description(d.oid, 'pg_database') FROM pg_catalog.pg_database d "
    "WHERE d.datname LIKE 'dbops\\_verify\\_%' ORDER BY 1"
)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def orphaned_scratch(rows, hostname, alive=pid_alive):
    """Names among `rows` ((name, sessions, comment) of pg_database) that a restore check killed
    halfway left behind: named by our pattern only, no session on it, and the process its mark
    names gone from this host (or no mark: killed between its CREATE and its COMMENT). A mark of
    another host cannot be judged from here: kept."""
    orphans = []
    for name, sessions, comment in rows:
        if not SCRATCH_NAME.match(name or "") or int(sessions or 0) > 0:
            continue
        mark = SCRATCH_MARK_RE.match(comment or "")
        if mark and (mark.group(2) != hostname or alive(int(mark.group(1)))):
            continue
        orphans.append(name)
    return orphans


def database_exists(cur, name):
    cur.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def create_database(cur, name, encoding=None):
    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident(name))
    if encoding:
        stmt = stmt + sql.SQL(" ENCODING {}").format(sql.Literal(encoding))
    cur.execute(stmt)


def drop_database(cur, name):
    try:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))
    except PG_PROGRAMMING_ERRORS:  # WITH (FORCE) needs PostgreSQL 13
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident(name)))


class Progress:
    """The status file of a running backup (option progress_file): one JSON object, rewritten
    atomically at most once a second while the dump streams and at each later step, removed
    when the module ends. The backup role reads it to show a long backup alive."""

    EVERY_S = 1.0

    def __init__(self, path, database):
        self.path = os.path.abspath(path) if path else None
        self.database = database
        self.t0 = time.monotonic()
        self.last = None
        self.off = False
        self.state = dict(database=database, pid=os.getpid(), step="starting", bytes=0, elapsed_s=0.0,
                          mb_s=None, started_at=iso(utc_now()))

    def update(self, step=None, nbytes=None, force=False):
        if self.path is None or self.off:
            return
        now = time.monotonic()
        if step is not None:
            self.state["step"] = step
        if nbytes is not None:
            self.state["bytes"] = int(nbytes)
        if not force and step is None and self.last is not None and now - self.last < self.EVERY_S:
            return
        self.last = now
        elapsed = now - self.t0
        self.state.update(elapsed_s=round(elapsed, 1),
                          mb_s=round(self.state["bytes"] / MB / elapsed, 1) if elapsed > 0 else None)
        try:
            write_atomic(os.path.dirname(self.path), os.path.basename(self.path),
                         manifest_bytes(self.state))
        except (OSError, BackupError):  # a full disk is BackupError
            self.off = True  # the status is a courtesy: it never fails the backup

    def dumped(self, nbytes):
        self.update(nbytes=nbytes)

    def remove(self):
        if self.path is not None:
            remove_quietly(self.path)


# --------------------------------------------------------------------------
# the work


class BackupRunner:
    """create / verify / restore / prune, driven by the module's params."""

    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.check_mode = module.check_mode
        self.result = dict(changed=False, deleted=[], kept=[])
        self._host = None
        self.tools = PgTools(module, self.p["db_container"], self.p["login_user"], self.p["login_password"])
        self.tools.lock_wait = self.p.get("lock_wait_timeout")
        self.progress = Progress(None, None)

    # -- plumbing ---------------------------------------------------------
    def host(self):
        if self._host is None:
            self._host = resolve_host(self.module)
        return self._host

    def connect(self, dbname):
        return Connector(self.p, self.host(), application_name="qadhya.dbops backup",
                         error=BackupError, lock_timeout=self.p.get("lock_wait_timeout")).open(dbname)

    def drop_orphaned_scratch(self, conn):
        """Drop the scratch databases restore checks killed halfway left (orphaned_scratch); the
        names in the result. A plain DROP (no FORCE): a session that came since keeps its database."""
        with conn.cursor() as cur:
            cur.execute(SCRATCH_SQL)
            orphans = orphaned_scratch(cur.fetchall(), socket.gethostname())
        dropped = self.result.setdefault("scratch_orphans_dropped", [])
        for name in orphans:
            if not self.check_mode:
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident(name)))
                except PG_ERRORS as exc:
                    self.module.warn("left the scratch database %r: %s" % (name, first_line(exc)))
                    continue
            dropped.append(name)
        if dropped:
            self.result["changed"] = True
        return dropped

    def prefix(self, database):
        if self.p.get("name_prefix"):
            return validate_prefix(self.p["name_prefix"])
        if not database:
            raise BackupError("set database or name_prefix so the module knows which backups are meant")
        return validate_prefix(default_prefix(database))

    def for_database(self, database):
        """The name the dumped data serves (the consolidation's target), validated."""
        if self.p.get("for_database"):
            return validate_identifier(self.p["for_database"], "for_database")
        return database

    def compression_level(self, fmt):
        level = self.p["compression_level"]
        low, high = LEVELS[fmt]
        if not low <= level <= high:
            raise BackupError(
                "compression_level %d is out of range for format %s (%d-%d); choose a level in range"
                % (level, fmt, low, high)
            )
        return level

    # -- create -----------------------------------------------------------
    def create(self):
        p = self.p
        database = validate_identifier(p["database"], "database")
        fmt = p["format"]
        level = self.compression_level(fmt)
        prefix = self.prefix(database)
        self.for_database(database)
        dest = os.path.abspath(p["dest_dir"])
        if not p["db_container"]:
            raise BackupError("db_container is required for action=create (pg_dump runs inside it); "
                              "set db_container")
        conn = self.connect(database)
        self.progress = Progress(None if self.check_mode else p.get("progress_file"), database)
        try:
            self.drop_orphaned_scratch(conn)
            return self._create(conn, database, fmt, level, prefix, dest)
        finally:
            self.progress.remove()
            with contextlib.suppress(PG_ERRORS):
                conn.close()

    def _plan_name(self, dest, prefix, fmt):
        for _attempt in range(3):
            started = utc_now()
            name = backup_name(prefix, started, fmt)
            path = os.path.join(dest, name)
            if not os.path.lexists(path) and not os.path.lexists(manifest_path(path)):
                return started, name, path
            time.sleep(1.0 - started.microsecond / 1e6 + 0.01)
        raise BackupError("%s already exists; wait a second and run again" % path)

    def _create(self, conn, database, fmt, level, prefix, dest):
        p, res = self.p, self.result
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_database_size(current_database()), current_setting('server_version'), "
                "pg_encoding_to_char(encoding) FROM pg_catalog.pg_database WHERE datname = current_database()"
            )
            db_size, server_version, encoding = cur.fetchone()
        started, name, path = self._plan_name(dest, prefix, fmt)
        space = free_space_check(dest, free_bytes(dest), db_size, p["free_space_margin_mb"])
        res.update(
            path=path, manifest_path=manifest_path(path), format=fmt, database=database,
            for_database=self.for_database(database), purpose=p["purpose"],
            estimated_bytes=int(db_size), free_space=space,
        )
        if not space["ok"]:
            raise BackupError(space["msg"])
        if self.check_mode:
            res["changed"] = True
            res["dir_created"] = ensure_dir(dest, check_mode=True)
            if p["prune"]:
                self._prune_dirs(database, prefix, protect=(), planned=True)
            res["msg"] = "would write %s (database size %.1f MB)" % (path, db_size / MB)
            return res

        res["dir_created"] = ensure_dir(dest)
        self.progress.update(step="dumping", force=True)
        if os.stat(dest).st_mode & 0o077:
            self.module.warn("%s is readable by group/others; consider chmod 0700" % dest)
        pg_dump_version = self.tools.pg_dump_version()
        zstd_where = None
        if fmt == "plain_zstd":
            zstd_where = self.tools.zstd_where()
            if zstd_where is None:
                raise BackupError(
                    "zstd is not installed in container %r nor on the Docker host; install zstd "
                    "or choose format custom or plain_gzip" % p["db_container"]
                )

        res["changed"] = True
        t0 = time.monotonic()
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        counts, sums, partitioned, count_errors = {}, {}, [], []
        with_sums = p["content_checksums"]

        def count_in_snapshot():
            try:
                with conn.cursor() as ccur:
                    got_counts, got_sums, got_partitioned = table_contents(ccur, with_sums)
                    counts.update(got_counts)
                    sums.update(got_sums or {})
                    partitioned.extend(got_partitioned)
            except PG_ERRORS as exc:
                count_errors.append(exc)

        counter = threading.Thread(target=count_in_snapshot, name="row-counts")
        counter.start()
        dump_error = None
        try:
            try:
                partial, nbytes, sha, cmd, warnings = self.tools.dump(
                    database, fmt, level, snapshot, dest, name, zstd_where, progress=self.progress.dumped)
            except BackupError as exc:
                dump_error = exc  # the partial file is already gone
        finally:
            counter.join()
            try:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
            except PG_ERRORS:
                pass
        waited = self._lock_wait_failure(conn, database, dump_error, count_errors)
        if waited is not None or dump_error is not None:
            if dump_error is None:
                remove_quietly(partial)
            raise waited or dump_error
        dump_s = time.monotonic() - t0
        if count_errors:
            remove_quietly(partial)
            raise BackupError("counting rows of %r failed: %s; check the login_user's privileges"
                              % (database, first_line(count_errors[0])))
        finished = utc_now()
        try:
            commit_partial(partial, path)
        except BaseException:
            remove_quietly(partial)
            raise
        manifest = build_manifest(
            database=database, server_version=server_version, pg_dump_version=pg_dump_version,
            fmt=fmt, level=level, file_name=name, nbytes=nbytes, sha256=sha, row_counts=counts,
            started_at=started, finished_at=finished, host=socket.gethostname(),
            container=p["db_container"], encoding=encoding, prefix=prefix,
            for_database=self.for_database(database), purpose=p["purpose"], partitioned_tables=partitioned,
            checksums=sums if with_sums else None, checksum_method=CHECKSUM_METHOD if with_sums else None,
        )
        try:
            write_atomic(dest, name + MANIFEST_SUFFIX, manifest_bytes(manifest))
        except BaseException as exc:
            # A backup without its manifest would never be recognised (nor pruned).
            remove_quietly(path)
            remove_quietly(manifest_path(path))
            if isinstance(exc, OSError):
                raise BackupError(
                    "writing the manifest in %s failed (%s); the backup was removed; free space or fix "
                    "permissions in %s" % (dest, exc.strerror, dest)
                ) from None
            raise
        res.update(
            bytes=nbytes, sha256=sha, row_counts=counts, checksums=sums if with_sums else {}, cmd=cmd,
            duration_s=round(dump_s, 3),
            throughput_mb_s=round(nbytes / MB / dump_s, 2) if dump_s > 0 else None,
            compression=manifest["compression"], pg_dump_version=pg_dump_version,
        )
        if warnings:
            res["warnings_from_tools"] = warnings

        self.progress.update(step="verifying (%s)" % p["verify"], nbytes=nbytes)
        verified = self._verify_file(path, manifest, p["verify"])
        manifest["verified"] = dict(level=verified["level"], ok=verified["ok"], at=iso(utc_now()),
                                    duration_s=verified["duration_s"])
        write_atomic(dest, name + MANIFEST_SUFFIX, manifest_bytes(manifest))
        res["verified"] = verified
        if not verified["ok"]:
            raise BackupError(
                "backup %s failed verification (%s): %s; the file is kept for inspection and marked "
                "unverified in its manifest" % (path, verified["level"], verified["details"].get("error")),
            )
        if p["copy_to"]:
            self.progress.update(step="copying to %s" % p["copy_to"])
            res["copies"] = self._copy(path, p["copy_to"], sha)
        if p["prune"]:
            self._prune_dirs(database, prefix, protect=(name,), planned=False)
        res["msg"] = "backup %s written (%.1f MB, %s, verified %s)" % (
            path, nbytes / MB, fmt, verified["level"])
        return res

    def _lock_wait_failure(self, conn, database, dump_error, count_errors):
        """A BackupError naming the sessions whose lock the dump or the count gave up
        waiting for (lock_wait_timeout), or None when neither failed that way."""
        counted = any(is_lock_timeout(exc) for exc in count_errors)
        # pg_dump gives up on LOCK TABLE with statement_timeout set to --lock-wait-timeout.
        stderr = (dump_error.details.get("stderr") or "") if dump_error is not None else ""
        dumped = "LOCK TABLE" in stderr and ("statement timeout" in stderr or "lock timeout" in stderr)
        if not (counted or dumped):
            return None
        try:
            with conn.cursor() as cur:
                rows = lock_holders(cur)
        except PG_ERRORS:
            rows = []
        return BackupError(lock_wait_message("the backup of %r" % database, self.p["lock_wait_timeout"],
                                             rows))

    # -- verification -------------------------------------------------------
    def _verify_file(self, path, manifest, level):
        """{level, ok, duration_s, details} for `path` against `manifest` (never raises BackupError)."""
        t0 = time.monotonic()
        details = {}
        done = "none"
        ok = True
        try:
            if level in ("checksum", "structure", "restore"):
                sha, size = sha256_file(path)
                details.update(sha256=sha, bytes=size)
                if size != manifest["bytes"] or sha != manifest["sha256"]:
                    raise BackupError(
                        "checksum mismatch for %s: file has %d bytes sha256 %s, manifest says %d bytes "
                        "sha256 %s; the file is damaged, use another backup"
                        % (path, size, sha[:16], manifest["bytes"], str(manifest["sha256"])[:16])
                    )
                done = "checksum"
            if level in ("structure", "restore"):
                details.update(self._structure(path, manifest))
                done = "structure"
            if level == "restore":
                if self.check_mode:
                    details["restore"] = "skipped in check mode (it would create a scratch database)"
                else:
                    details.update(self._restore_check(path, manifest))
                    done = "restore"
        except BackupError as exc:
            ok = False
            details["error"] = str(exc)
            details["failed_level"] = {"none": "checksum", "checksum": "structure",
                                       "structure": "restore"}[done]
        except OSError as exc:
            ok = False
            details["error"] = "cannot read %s: %s; check path and permissions" % (path, exc.strerror)
        except VERIFY_RUN_ERRORS as exc:
            ok = False
            details["error"] = "verification of %s could not run: %s" % (path, first_line(exc))
        details["checked"] = done
        return dict(level=level, ok=ok, duration_s=round(time.monotonic() - t0, 3), details=details)

    def _structure(self, path, manifest):
        fmt = manifest["format"]
        if fmt == "custom":
            entries = self.tools.toc(path)
            missing = missing_table_data(entries, manifest.get("row_counts"),
                                         manifest.get("partitioned_tables") or ())
            if missing:
                raise BackupError("structure check of %s: no TABLE DATA entry for %s; the dump is "
                                  "incomplete, use another backup" % (path, ", ".join(missing[:5])))
            return dict(toc_entries=len(entries),
                        table_data_entries=len([e for e in entries if " TABLE DATA " in e]))
        tail = self.tools.sql_tail(path, fmt)
        if not tail.complete():
            raise BackupError(
                "%s decompresses to %d bytes of SQL without %r: the dump is incomplete, use another backup"
                % (path, tail.total, COMPLETION_MARKER.decode())
            )
        return dict(sql_bytes=tail.total, completion_marker=True)

    def _contents_of(self, dbname, checksums):
        """({table: rows}, {table: checksum} or None) of `dbname`, in one snapshot."""
        conn = self.connect(dbname)
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
            with conn.cursor() as cur:
                counts, sums, _partitioned = table_contents(cur, checksums)
            conn.rollback()
            return counts, sums
        finally:
            conn.close()

    def _compare(self, manifest, dbname):
        """(diffs, counts, checksums or None, what was compared) of `dbname` against `manifest`."""
        expected_sums = manifest_checksums(manifest, CHECKSUM_METHOD)
        counts, sums = self._contents_of(dbname, expected_sums is not None)
        diffs = compare_contents(manifest.get("row_counts") or {}, counts, expected_sums, sums)
        return diffs, counts, sums, "counts and checksums" if expected_sums is not None else "counts"

    def _restore_check(self, path, manifest):
        """Restore into a scratch database, compare every table with the manifest, always drop it."""
        scratch = scratch_name(manifest.get("database") or "db")
        admin = self.connect(self.p["maintenance_db"])
        t0 = time.monotonic()
        try:
            with admin.cursor() as cur:
                create_database(cur, scratch, manifest.get("encoding"))
            try:
                with admin.cursor() as cur:
                    cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        ident(scratch), sql.Literal(SCRATCH_MARK % (os.getpid(), socket.gethostname()))))
                self.tools.restore(path, manifest["format"], scratch)
                diffs, actual, _sums, compared = self._compare(manifest, scratch)
            finally:
                try:
                    with admin.cursor() as cur:
                        drop_database(cur, scratch)
                except PG_ERRORS as exc:
                    raise BackupError("could not drop the scratch database %r: %s; drop it by hand"
                                      % (scratch, first_line(exc))) from None
        finally:
            admin.close()
        if diffs:
            raise BackupError(
                "restore check of %s: %s differ from the manifest: %s; do not rely on this backup"
                % (path, "tables" if compared != "counts" else "row counts", describe_diffs(diffs))
            )
        return dict(scratch_database=scratch, scratch_dropped=True, tables_compared=len(actual),
                    compared=compared, restore_s=round(time.monotonic() - t0, 3))

    def _load(self, path):
        path = os.path.abspath(path)
        if path.endswith(MANIFEST_SUFFIX):
            path = path[: -len(MANIFEST_SUFFIX)]
        if not os.path.isfile(path):
            raise BackupError("backup file %s does not exist; check path" % path)
        manifest = load_manifest(path)
        if manifest is None:
            raise BackupError("manifest %s is missing or unreadable; only backups written by %s with "
                              "their manifest can be verified" % (manifest_path(path), TOOL))
        problem = manifest_problem(manifest, os.path.basename(path))
        if problem:
            raise BackupError("manifest %s %s; it cannot vouch for %s" % (manifest_path(path), problem, path))
        return path, manifest

    def verify(self):
        path, manifest = self._load(self.p["path"])
        res = self.result
        if self.p["verify"] == "restore":
            admin = self.connect(self.p["maintenance_db"])
            try:
                self.drop_orphaned_scratch(admin)
            finally:
                admin.close()
        res.update(path=path, manifest_path=manifest_path(path), format=manifest["format"],
                   database=manifest.get("database"), for_database=served_database(manifest),
                   purpose=manifest.get("purpose") or "unknown", bytes=manifest["bytes"],
                   sha256=manifest["sha256"], row_counts=manifest.get("row_counts"),
                   checksums=manifest.get("checksums") or {})
        verified = self._verify_file(path, manifest, self.p["verify"])
        res["verified"] = verified
        res["duration_s"] = verified["duration_s"]
        if not verified["ok"]:
            raise BackupError(verified["details"]["error"])
        res["msg"] = "%s verified (%s) in %.2f s" % (path, verified["level"], verified["duration_s"])
        return res

    # -- restore ----------------------------------------------------------
    def restore(self):
        p, res = self.p, self.result
        target = p["restore_target"]
        if not target:
            raise BackupError("action=restore needs restore_target (a new or empty database); set it")
        validate_identifier(target, "restore_target")
        path, manifest = self._load(p["path"])
        expected = manifest.get("row_counts") or {}
        res.update(path=path, manifest_path=manifest_path(path), format=manifest["format"],
                   database=target, restore_target=target, row_counts=expected,
                   checksums=manifest.get("checksums") or {})
        level = p["verify"] if p["verify"] in ("checksum", "structure") else (
            "structure" if p["verify"] == "restore" else "none")
        verified = self._verify_file(path, manifest, level)
        res["verified"] = verified
        if not verified["ok"]:
            raise BackupError("refusing to restore: %s" % verified["details"]["error"])
        admin = self.connect(p["maintenance_db"])
        try:
            with admin.cursor() as cur:
                exists = database_exists(cur, target)
            if exists:
                diffs, actual, sums, compared = self._compare(manifest, target)
                if actual:
                    if not diffs:
                        res["msg"] = ("%r already holds exactly the rows of this backup (%s compared); "
                                      "nothing to do" % (target, compared))
                        res.update(row_counts_after=actual, checksums_after=sums or {}, compared=compared)
                        return res
                    raise BackupError(
                        "restore_target %r already exists and holds %d tables (not the content of this "
                        "backup); restore into a new database name or drop it yourself first"
                        % (target, len(actual))
                    )
            res["changed"] = True
            res["target_created"] = not exists
            if self.check_mode:
                res["msg"] = "would restore %s into %r" % (path, target)
                return res
            t0 = time.monotonic()
            if not exists:
                with admin.cursor() as cur:
                    create_database(cur, target, manifest.get("encoding"))
            try:
                cmd = self.tools.restore(path, manifest["format"], target)[0]
                diffs, actual, sums, compared = self._compare(manifest, target)
                if diffs:
                    raise BackupError("restore of %s into %r: %s differ from the manifest: %s"
                                      % (path, target, "tables" if compared != "counts" else "row counts",
                                         describe_diffs(diffs)))
            except BaseException:
                if not exists:
                    try:
                        with admin.cursor() as cur:
                            drop_database(cur, target)
                    except PG_ERRORS:
                        self.module.warn("could not drop %r after the failed restore; drop it by hand"
                                         % target)
                raise
        finally:
            admin.close()
        if compared == "counts":
            said = "row counts equal the manifest (%d tables; the manifest holds no content checksums, " \
                   "so only counts were compared)" % len(actual)
        else:
            said = "row counts equal the manifest, and so do the content checksums (%d tables)" % len(actual)
        res.update(cmd=cmd, row_counts_after=actual, checksums_after=sums or {}, compared=compared,
                   duration_s=round(time.monotonic() - t0, 3),
                   msg="restored %s into %r; %s" % (path, target, said))
        return res

    # -- copies -----------------------------------------------------------
    def _copy(self, path, copy_to, sha):
        directory = os.path.abspath(copy_to)
        ensure_dir(directory)
        copies = []
        for src in (path, manifest_path(path)):
            name = os.path.basename(src)
            size = os.path.getsize(src)
            free = free_bytes(directory)
            if free < size:
                raise BackupError("not enough free space in %s for the copy: %d MB free, need %d MB; free "
                                  "space or choose another copy_to" % (directory, free // MB, -(-size // MB)))
            partial, _size, got = stream_to_partial(directory, name, read_chunks(src), option="copy_to")
            if src == path and got != sha:
                remove_quietly(partial)
                raise BackupError("copy of %s to %s changed on the way (sha256 differs); check %s"
                                  % (path, directory, directory))
            final = os.path.join(directory, name)
            commit_partial(partial, final)  # never replaces a file already there
            copies.append(final)
        return copies

    # -- prune ------------------------------------------------------------
    def _prune_dirs(self, database, prefix, protect, planned):
        dirs = [os.path.abspath(self.p["dest_dir"])]
        if self.p.get("copy_to"):
            dirs.append(os.path.abspath(self.p["copy_to"]))
        now = utc_now()
        res = self.result
        for directory in dirs:
            ours, ignored = scan_backups(directory, database=database, prefix=prefix)
            delete, keep = select_prune(ours, now, self.p["retention_days"], self.p["retention_keep"],
                                        protect=protect)
            for entry in delete:
                if not planned and not self.check_mode:
                    delete_backup(entry["path"])
                res["deleted"].append(entry["path"])
            res["kept"].extend(entry["path"] for entry in keep)
            res.setdefault("ignored", []).extend(os.path.join(directory, n) for n in ignored)
        if res["deleted"]:
            res["changed"] = True

    def clean(self):
        """action=clean: only the orphaned scratch databases (after a crash, say)."""
        admin = self.connect(self.p["maintenance_db"])
        try:
            dropped = self.drop_orphaned_scratch(admin)
        finally:
            admin.close()
        self.result["msg"] = ("%s %d orphaned scratch database(s)%s" % (
            "would drop" if self.check_mode else "dropped", len(dropped),
            (": " + ", ".join(dropped)) if dropped else ""))
        return self.result

    def prune(self):
        p = self.p
        database = p.get("database")
        if database:
            validate_identifier(database, "database")
        prefix = self.prefix(database)
        self._prune_dirs(database, prefix, protect=(), planned=False)
        self.result["msg"] = "%s %d backup(s), kept %d" % (
            "would delete" if self.check_mode else "deleted", len(self.result["deleted"]),
            len(self.result["kept"]))
        return self.result

    def run(self):
        try:
            return getattr(self, self.p["action"])()
        except DockerError as exc:
            raise BackupError(str(exc)) from None
        except PG_ERRORS as exc:
            raise BackupError("PostgreSQL error: %s; check the connection options and privileges"
                              % first_line(exc)) from None
        except ValueError as exc:  # validate_identifier
            raise BackupError("%s; fix the option" % exc) from None

    def failure_result(self):
        """Result keys to return with a failure; `changed` only if something stays written."""
        res = dict(self.result)
        path = res.get("path")
        wrote = bool(path) and not self.check_mode and self.p["action"] == "create" and os.path.exists(path)
        res["changed"] = bool(res.get("deleted")) and not self.check_mode or wrote
        return res
