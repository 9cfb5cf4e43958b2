# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pg_dump / pg_restore / psql / zstd processes of a backup (private).

They run inside the database container (`docker exec`), so their version
always matches the server's; their output streams through this process
(run_command would buffer a whole dump in memory). Every process of a
pipeline is waited for and checked: a non-zero exit status, or an error
line on stderr with exit status 0 (pg_dump can do that), fails the step.
The password reaches them only through the environment, never argv.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading

from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import (
    CHUNK,
    COMPLETION_MARKER,
    MAGIC,
    MIN_BYTES,
    BackupError,
    Tail,
    gunzip_chunks,
    gzip_chunks,
    read_chunks,
    remove_quietly,
    stream_to_partial,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import timeout_ms
from ansible_collections.qadhya.dbops.plugins.module_utils._docker import exec_argv
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

ERROR_LINE_RE = re.compile(r"(?im)^.*\b(error|fatal|panic)\b.*$")


def conninfo_dbname(name):
    """`dbname='...'` for libpq tools: a name is never read as options or a URI."""
    return "dbname='%s'" % name.replace("\\", "\\\\").replace("'", "\\'")


def first_error_line(text):
    match = ERROR_LINE_RE.search(text or "")
    if match:
        return match.group(0).strip()
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Procs:
    """Processes of one pipeline: started in order, all waited, all checked."""

    def __init__(self, module, container, login_user, password):
        self.module = module
        self.container = container
        self.user = login_user
        self.env = {"PGPASSWORD": password} if password else {}
        self.items = []

    def argv(self, tool, args, interactive=False, env=True, where="container"):
        if where == "host":
            return [self.module.get_bin_path(tool, required=True)] + list(args), {}
        if not self.container:
            raise BackupError("db_container is required to run %s; set db_container" % tool)
        return exec_argv(self.module, self.container, [tool] + list(args),
                         env=self.env if env else None, interactive=interactive)

    def start(self, label, cmd, extra_env, stdin=None, stdout=subprocess.PIPE):
        errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish()
        # run_command buffers whole outputs in memory; dumps and restores must stream.
        proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
            cmd, stdin=stdin, stdout=stdout, stderr=errfile, env=dict(os.environ, **extra_env),
        )
        proc.label, proc.cmd, proc.errfile = label, cmd, errfile
        self.items.append(proc)
        return proc

    def kill(self):
        for proc in self.items:
            if proc.poll() is None:
                proc.kill()

    def finish(self, timeout=None):
        """[(label, rc, stderr, cmd)] after waiting for every process."""
        results = []
        for proc in self.items:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            proc.errfile.seek(0)
            err = proc.errfile.read().decode("utf-8", "replace")[-4000:]
            proc.errfile.close()
            results.append((proc.label, rc, err, proc.cmd))
        self.items = []
        return results

    def tool_available(self, tool):
        """'host', 'container' or None: where `tool` (zstd) runs. The host first: there the SQL a
        dump streams out of the container (or a restore into it) crosses `docker exec` once, not
        out to the module and back in to a second one."""
        if self.module.get_bin_path(tool):
            return "host"
        if self.container:
            cmd, extra = self.argv(tool, ["--version"], env=False)
            if self.module.run_command(cmd, environ_update=extra)[0] == 0:
                return "container"
        return None


def check_results(results, what):
    """Raise BackupError naming the first failed process of a pipeline."""
    warnings = []
    for label, rc, err, cmd in results:
        line = first_error_line(err)
        if rc != 0:
            raise BackupError(
                "%s failed: %s exited with rc=%s: %s" % (what, label, rc, line or "no message"),
                rc=rc, stderr=err, cmd=cmd,
            )
        if ERROR_LINE_RE.search(err or ""):
            raise BackupError(
                "%s failed: %s reported an error although it exited 0: %s" % (what, label, line),
                rc=rc, stderr=err, cmd=cmd,
            )
        if err.strip():
            warnings.append("%s: %s" % (label, err.strip().splitlines()[-1]))
    return warnings


def pump(source, sink, tail, errors):
    """Copy `source` (file) into `sink` (pipe) in a thread, keeping the tail."""
    try:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            tail.feed(chunk)
            sink.write(chunk)
    except (OSError, ValueError) as exc:  # the reader went away: reported by rc
        errors.append(exc)
    finally:
        with contextlib.suppress(OSError):
            sink.close()


def proc_chunks(proc):
    return iter(lambda: proc.stdout.read(CHUNK), b"")


class PgTools:
    """The client programs of one database container, as checked streaming pipelines."""

    def __init__(self, module, container, login_user, password):
        self.module = module
        self.container = container
        self.user = login_user
        self.password = password
        self.lock_wait = None  # seconds pg_dump waits for a table lock; None: forever

    def procs(self):
        return Procs(self.module, self.container, self.user, self.password)

    def tool_args(self, dbname):
        return ["--username=%s" % self.user, "--no-password", "--dbname=%s" % conninfo_dbname(dbname)]

    def zstd_where(self):
        return self.procs().tool_available("zstd")

    def pg_dump_version(self):
        procs = self.procs()
        cmd, extra = procs.argv("pg_dump", ["--version"], env=False)
        rc, out, err = self.module.run_command(cmd, environ_update=extra)
        if rc != 0:
            raise BackupError(
                "cannot run pg_dump in container %r (rc=%d: %s); check db_container"
                % (self.container, rc, first_error_line(err) or out.strip())
            )
        return out.strip()

    def dump(self, database, fmt, level, snapshot, dest, name, zstd_where, progress=None):
        """Run pg_dump (+ compression) into a partial file; returns (partial, bytes, sha, cmd, warnings).

        `progress`, when given, is called with the bytes written so far after each chunk."""
        procs = self.procs()
        args = self.tool_args(database) + ["--snapshot=%s" % snapshot]
        if self.lock_wait:
            args.append("--lock-wait-timeout=%s" % timeout_ms(self.lock_wait))
        tail = Tail()
        pump_errors = []
        pumper = None
        if fmt == "custom":
            args += ["--format=custom", "--compress=%d" % level]
        else:
            args += ["--format=plain"]
        cmd, extra = procs.argv("pg_dump", args)
        try:
            dump = procs.start("pg_dump", cmd, extra)
            if fmt == "custom":
                chunks = proc_chunks(dump)
            elif fmt == "plain_gzip":
                chunks = gzip_chunks(proc_chunks(dump), level, tail)
            else:
                zcmd, zextra = procs.argv("zstd", ["-q", "-c", "-%d" % level], interactive=True, env=False,
                                          where=zstd_where)
                comp = procs.start("zstd", zcmd, zextra, stdin=subprocess.PIPE)
                pumper = threading.Thread(target=pump, args=(dump.stdout, comp.stdin, tail, pump_errors),
                                          name="pg_dump-to-zstd")
                pumper.start()
                chunks = proc_chunks(comp)
            head = bytearray()

            def watched(source):
                written = 0
                for chunk in source:
                    if len(head) < 8:
                        head.extend(chunk[:8])
                    yield chunk
                    written += len(chunk)
                    if progress is not None:
                        progress(written)

            partial, nbytes, sha = stream_to_partial(dest, name, watched(chunks))
        except BaseException:
            procs.kill()
            if pumper is not None:
                pumper.join()
            procs.finish(timeout=30)
            raise
        try:
            if pumper is not None:
                pumper.join()
            warnings = check_results(procs.finish(), "pg_dump of database %r" % database)
            if pump_errors:
                raise BackupError("pg_dump of database %r: feeding zstd failed (%s); check the zstd "
                                  "messages" % (database, first_line(pump_errors[0])))
            if nbytes < MIN_BYTES or not bytes(head).startswith(MAGIC[fmt]):
                raise BackupError(
                    "pg_dump of database %r produced %d bytes without a valid %s header; check the "
                    "pg_dump messages and the server log" % (database, nbytes, fmt)
                )
            if fmt != "custom" and not tail.complete():
                raise BackupError(
                    "pg_dump of database %r ended without %r (%d bytes of SQL): the dump is incomplete; "
                    "check the server log" % (database, COMPLETION_MARKER.decode(), tail.total)
                )
        except BaseException:
            remove_quietly(partial)
            raise
        return partial, nbytes, sha, cmd, warnings

    def toc(self, path):
        """Entries of `pg_restore --list` of a custom-format file (comments left out)."""
        procs = self.procs()
        cmd, extra = procs.argv("pg_restore", ["--list"], interactive=True, env=False)
        with open(path, "rb") as handle:
            proc = procs.start("pg_restore --list", cmd, extra, stdin=handle)
            listing = proc.stdout.read()
        check_results(procs.finish(), "structure check of %s" % path)
        text = listing.decode("utf-8", "replace")
        return [line for line in text.splitlines() if line and not line.startswith(";")]

    def sql_tail(self, path, fmt):
        """A Tail of the plain SQL a plain_gzip / plain_zstd file decompresses to."""
        tail = Tail()
        if fmt == "plain_gzip":
            for chunk in gunzip_chunks(read_chunks(path)):
                tail.feed(chunk)
            return tail
        procs = self.procs()
        where = procs.tool_available("zstd")
        if where is None:
            raise BackupError("zstd is needed to check %s but is installed neither in the container "
                              "nor on the Docker host; install zstd" % path)
        cmd, extra = procs.argv("zstd", ["-q", "-d", "-c"], interactive=True, env=False, where=where)
        with open(path, "rb") as handle:
            proc = procs.start("zstd -d", cmd, extra, stdin=handle)
            for chunk in proc_chunks(proc):
                tail.feed(chunk)
        check_results(procs.finish(), "decompression test of %s" % path)
        return tail

    def restore(self, path, fmt, dbname):
        """Restore the file into `dbname` in one transaction; raises BackupError."""
        procs = self.procs()
        base = self.tool_args(dbname)
        if fmt == "custom":
            cmd, extra = procs.argv("pg_restore", base + ["--exit-on-error", "--single-transaction"],
                                    interactive=True)
        else:
            cmd, extra = procs.argv("psql", base + ["--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
                                                    "--single-transaction"], interactive=True)
        try:
            with open(path, "rb") as handle:
                if fmt == "custom":
                    procs.start("pg_restore", cmd, extra, stdin=handle, stdout=subprocess.DEVNULL)
                elif fmt == "plain_gzip":
                    proc = procs.start("psql", cmd, extra, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                    try:
                        for chunk in gunzip_chunks(read_chunks(path)):
                            proc.stdin.write(chunk)
                    except BrokenPipeError:
                        pass  # psql stopped on an error: its rc and stderr say which
                    proc.stdin.close()
                else:
                    where = procs.tool_available("zstd")
                    if where is None:
                        raise BackupError("zstd is needed to restore %s; install zstd" % path)
                    zcmd, zextra = procs.argv("zstd", ["-q", "-d", "-c"], interactive=True, env=False,
                                              where=where)
                    dec = procs.start("zstd -d", zcmd, zextra, stdin=handle)
                    procs.start("psql", cmd, extra, stdin=dec.stdout, stdout=subprocess.DEVNULL)
                    dec.stdout.close()
                warnings = check_results(procs.finish(), "restore of %s into %r" % (path, dbname))
        except BaseException:
            procs.kill()
            procs.finish(timeout=30)
            raise
        return cmd, warnings
