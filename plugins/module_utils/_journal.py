# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run's undo journal on the Docker host (private).

A run of a playbook that changes things owns one journal file: a JSON
document with a header (run id, host, who started it, state) and a list of
entries, one per change, appended by the module that made the change, at
the moment it made it. The file is rewritten whole on every append (temp
file 0600, fsync, atomic rename), so a crash leaves either the old or the
new journal, never half of one, and a rerun knows what the interrupted run
changed. Rollback reads the entries in reverse.

Entries are plain dicts: ``{"step": <kind>, "at": <UTC time>, ...}`` plus
whatever the module needs to undo it (``from``/``to`` of a rename, the
backup of a dropped database, the backup of an env file, ...).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import tempfile
import time

JOURNAL_VERSION = 1
# Lock file beside the journals: exists while a run of ours is in progress.
LOCK_NAME = "run.lock"
# Beside it, held (flock) by an app_switch for as long as its process runs.
WINDOW_LOCK_NAME = "window.lock"


class JournalError(Exception):
    pass


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: UP017 - targets may run Python < 3.11


def write_json_atomic(path, document, mode=0o600):
    """Write `document` to `path` as JSON: temp file `mode`, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, sort_keys=True, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_journal(path):
    """The journal document at `path`; JournalError naming the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        raise JournalError("cannot read the run journal %s: %s" % (path, exc)) from None
    if not isinstance(document, dict) or not isinstance(document.get("entries"), list):
        raise JournalError("%s is not a run journal of ours (no entries list)" % path)
    return document


def append(path, entry):
    """Append one entry (a dict with at least "step") to the journal at `path`.

    Returns the entry as written (with its time stamp). A journal that is not
    there is an error: the run opens it before it changes anything.
    """
    if not path:
        return None
    if "step" not in entry:
        raise JournalError("a journal entry needs a 'step'")
    document = read_journal(path)
    written = dict(entry, at=entry.get("at") or utc_now())
    document["entries"].append(written)
    document["updated_at"] = written["at"]
    write_json_atomic(path, document)
    return written


class ModuleJournal:
    """What a module uses: append entries to its `journal` option's file.

    Does nothing when the module got no journal or runs in check mode, so
    the modules can journal unconditionally. A journal that cannot be
    written fails the module before it changes anything more: changing what
    the rollback cannot see would be worse than stopping.
    """

    def __init__(self, module, option="journal"):
        self.module = module
        self.path = None if module.check_mode else module.params.get(option)
        self.written = []

    def __call__(self, step, **details):
        if not self.path:
            return None
        try:
            entry = append(self.path, dict(details, step=step))
        except (JournalError, OSError) as exc:
            raise JournalError("cannot append to the run journal %s: %s; nothing more was changed"
                               % (self.path, exc)) from None
        self.written.append(entry)
        return entry


def journal_argument_spec():
    return dict(journal=dict(type="path"))


def create_exclusive(path, document):
    """Create `path` holding `document` only when it does not exist (a lock).

    Returns True when created, False when it already existed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    return True


# The partial name db_backup writes a dump under until it is complete
# (_backup_files.stream_to_partial): hidden, never judged as a backup.
PARTIAL_RE = re.compile(r"^\..+\.partial-[0-9a-f]{12}$")
# Without the right to see every process's open files, only partials this
# old are taken as orphans.
PARTIAL_UNSEEN_AGE_S = 86400


def open_files(proc="/proc"):
    """(set of paths some process has open, whether every process could be read)."""
    paths, complete = set(), True
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return paths, False
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # gone meanwhile
        except OSError:
            complete = False
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                paths.add(os.readlink(os.path.join(fd_dir, fd)))
    return paths, complete


def orphan_partials(directory, now=None, proc="/proc"):
    """The partial backup files in `directory` that no process is writing: left by a run that
    was killed. A partial some process has open (a backup running now) is never one."""
    try:
        names = [n for n in os.listdir(directory) if PARTIAL_RE.match(n)]
    except OSError:
        return []
    if not names:
        return []
    held, complete = open_files(proc)
    now = time.time() if now is None else now
    orphans = []
    for name in sorted(names):
        path = os.path.join(directory, name)
        try:
            age = now - os.stat(path).st_mtime
        except OSError:
            continue
        if os.path.realpath(path) in held or path in held:
            continue
        if complete or age >= PARTIAL_UNSEEN_AGE_S:
            orphans.append(path)
    return orphans


class WindowBusy(JournalError):
    pass


def window_holder(handle):
    handle.seek(0)
    return handle.read().strip() or "?"


def wait_window_idle(path, timeout, clock=time.monotonic, sleep=time.sleep):
    """Wait until no switch holds the window lock at `path`; (seconds waited, holder's pid or None).

    A run whose ansible-playbook was killed in the window leaves its app_switch running (Ansible's
    workers run in sessions of their own) until the switch ends its window: the next run must not
    judge or undo that run's journal while it still changes. Raises WindowBusy after `timeout`.
    """
    if not os.path.exists(path):
        return 0.0, None
    started = clock()
    held_by = None
    with open(path, encoding="utf-8") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return round(clock() - started, 3), held_by
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                held_by = window_holder(handle)
            if clock() - started >= timeout:
                raise WindowBusy("a switch of an earlier run (process %s) still runs on this host after %ss; "
                                 "let it finish (it ends its own window) and rerun" % (held_by, timeout))
            sleep(0.2)


def hold_window(path):
    """Take the window lock at `path` for as long as this process runs (or until the handle is
    closed), noting our pid in it; private like the journals beside it (0600)."""
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = window_holder(handle)
        handle.close()
        raise WindowBusy("another switch (process %s) is running on this host; nothing was changed"
                         % holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write("%d\n" % os.getpid())
    handle.flush()
    return handle
