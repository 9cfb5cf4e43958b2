# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tracked SQL migrations: files, planning and batching, without a server (private).

* ``MigrationFile``: one file read once, with what ``_sql_scan`` says about
  it (statements, created objects, whether it can run in a transaction) and
  the one-line problem that stops a run before anything changes;
* pure planning helpers (checksums, pending selection, adopt decisions) and
  ``plan_batches``, which groups the pending files into the steps the runner
  commits: one transaction for every run of files that allow it, a file that
  cannot run in a transaction alone;
* the one-line failure messages.

The part that talks to PostgreSQL is ``_migration_runner``.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line
from ansible_collections.qadhya.dbops.plugins.module_utils._sql_scan import (
    NO_TRANSACTION_MARKER,
    commits_first,
    created_objects,
    line_of,
    no_transaction,
    scan_sql,
    transaction_control,
    unterminated,
)

LOCK_NAMESPACE = "qadhya.dbops.migrations"

# Columns of the tracking table, in creation order. An app's own simpler
# table is upgraded with ADD COLUMN IF NOT EXISTS for whatever it lacks.
TRACKING_COLUMNS = (
    ("name", "text PRIMARY KEY"),
    ("applied_at", "timestamptz NOT NULL DEFAULT now()"),
    ("checksum", "text"),
    ("applied_by", "text"),
    ("execution_ms", "integer"),
    ("adopted", "boolean NOT NULL DEFAULT false"),
)

SHA256_RE = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")


class MigrationError(Exception):
    """A run must stop; ``msg`` is one line, ``details`` go into the result."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


class MigrationFile:
    """A `*.sql` file of the migrations directory, read once."""

    def __init__(self, name, path, data):
        self.name = name
        self.path = path
        self.data = data
        self.sha256 = sha256_hex(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(
                "migration %s is not valid UTF-8 (line %d, byte %d); save it as UTF-8"
                % (name, data.count(b"\n", 0, exc.start) + 1, exc.start)
            ) from None
        # A BOM is not SQL; positions stay right because lines do not move.
        self.text = text[1:] if text.startswith("\ufeff") else text
        self.statements = scan_sql(self.text)
        self.objects = created_objects(self.statements)
        # (line, reason) when PostgreSQL refuses the file inside a transaction
        self.no_transaction = no_transaction(self.text, self.statements)
        # (line, what) when the files after this one need it committed
        self.ends_batch = commits_first(self.statements)

    @property
    def stem(self):
        return self.name[:-4] if self.name.endswith(".sql") else self.name

    @property
    def transactional(self):
        return self.no_transaction is None

    def problem(self):
        """One line saying why this file cannot be run, or None."""
        if not self.statements:
            return (
                "migration %s is empty (no SQL statement, %d bytes); add its SQL or remove "
                "the file" % (self.name, len(self.data))
            )
        found = unterminated(self.text, self.statements)
        if found:
            return "migration %s has an unterminated %s starting on line %d; close it" % (
                self.name, found[1], found[0])
        found = transaction_control(self.statements)
        if found:
            line, what = found[0]
            return (
                "migration %s contains %s on line %d; the module owns the transactions, "
                "remove transaction control (and psql meta-commands) from the file; a file "
                "that must run outside a transaction says so with a '-- %s' comment"
                % (self.name, what, line, NO_TRANSACTION_MARKER)
            )
        return None


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def list_migration_names(directory):
    """Names of the `*.sql` regular files of `directory`, in lexical order."""
    if not os.path.isdir(directory):
        raise MigrationError(
            "migrations_dir %s does not exist or is not a directory on this host; "
            "copy the migrations there or fix the path" % directory
        )
    names = []
    for entry in os.listdir(directory):
        if entry.startswith(".") or not entry.endswith(".sql"):
            continue
        if os.path.isfile(os.path.join(directory, entry)):
            names.append(entry)
    return sorted(names)


def load_migrations(directory):
    files = []
    for name in list_migration_names(directory):
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise MigrationError(
                "migration %s cannot be read: %s; make it readable by the user the module "
                "runs as" % (name, exc.strerror or exc)
            ) from None
        files.append(MigrationFile(name, path, data))
    return files


def refuse_problems(files):
    """Stop before anything changes when a file to run has a problem."""
    for mf in files:
        problem = mf.problem()
        if problem:
            raise MigrationError(problem, failed=mf.name)


# ---------------------------------------------------------------------------
# Planning (pure)
# ---------------------------------------------------------------------------


class Record:
    """One row of the tracking table."""

    __slots__ = ("name", "checksum", "applied_at", "adopted")

    def __init__(self, name, checksum=None, applied_at=None, adopted=False):
        self.name = name
        self.checksum = checksum
        self.applied_at = applied_at
        self.adopted = adopted


def match_records(files, records):
    """Map file name -> Record for applied files, and list records without file.

    A record matches a file by its full name or by the name without `.sql`
    (some apps record migrations without the extension). When a table has no
    unique constraint and holds the same name twice, the first row wins.
    """
    by_name = {}
    for rec in records:
        by_name.setdefault(rec.name, rec)
    applied = {}
    used = set()
    for mf in files:
        rec = by_name.get(mf.name)
        if rec is None:
            rec = by_name.get(mf.stem)
        if rec is not None:
            applied[mf.name] = rec
            used.add(rec.name)
    missing = [name for name in by_name if name not in used]
    return applied, missing


def tracked_checksum(value):
    """The sha256 hex of a stored checksum, or None if it is not one of ours."""
    if not value:
        return None
    m = SHA256_RE.match(value.strip())
    return m.group(1).lower() if m else None


def format_when(value):
    if value is None:
        return "an unknown date"
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def checksum_problems(files, applied):
    """Split applied files into untracked (no sha256 recorded) and mismatches."""
    untracked = []
    mismatches = []
    for mf in files:
        rec = applied.get(mf.name)
        if rec is None:
            continue
        recorded = tracked_checksum(rec.checksum)
        if recorded is None:
            untracked.append(mf.name)
        elif recorded != mf.sha256:
            mismatches.append(
                dict(
                    name=mf.name,
                    applied_at=format_when(rec.applied_at),
                    recorded_sha256=recorded,
                    file_sha256=mf.sha256,
                )
            )
    return untracked, mismatches


def mismatch_message(mismatches):
    m = mismatches[0]
    msg = (
        "migration %s was applied on %s with sha256 %s…, but the file now has %s…; "
        "restore the original file or add a new migration"
        % (m["name"], m["applied_at"], m["recorded_sha256"][:12], m["file_sha256"][:12])
    )
    if len(mismatches) > 1:
        msg += " (%d more changed: %s)" % (
            len(mismatches) - 1,
            ", ".join(x["name"] for x in mismatches[1:]),
        )
    return msg


def select_files(files, applied, names, target, what="apply"):
    """Unapplied files this run is about, in order (filtered by names and target)."""
    known = [mf.name for mf in files]
    for name in names:
        if name not in known:
            raise MigrationError(
                "names: %s is not a *.sql file of migrations_dir; known: %s"
                % (name, ", ".join(known) or "none")
            )
    if target is not None and target not in known:
        raise MigrationError(
            "target %s is not a *.sql file of migrations_dir; give a file name such as %s"
            % (target, known[-1] if known else "0001_init.sql")
        )
    chosen = []
    for mf in files:
        if target is not None and mf.name > target:
            break
        if names and mf.name not in names:
            continue
        if mf.name in applied:
            continue
        chosen.append(mf)
    if what == "baseline" and not names and target is None:
        raise MigrationError(
            "action=baseline needs names (the migrations applied by hand) or a target "
            "(record every file up to it)"
        )
    return chosen


def adopt_decision(mf, exists):
    """For adopt_existing: 'adopt', 'apply', or raise when the file is half there.

    `exists` maps each DbObject of the file to True/False. Only objects the
    file defines outright count (CREATE OR REPLACE ones may predate it): none
    there -> apply; all there (and its OR REPLACE objects too) -> adopt; a mix
    -> refuse, naming both sides.
    """
    defining = [o for o in mf.objects if not o.replace]
    if not defining:
        return "apply"
    present = [o for o in defining if exists[o]]
    if not present:
        return "apply"
    missing = [o for o in mf.objects if not exists[o]]
    if not missing:
        return "adopt"
    raise MigrationError(
        "migration %s looks partly applied: existing: %s; missing: %s; finish or undo it "
        "by hand, then rerun (baseline or apply)"
        % (
            mf.name,
            ", ".join(str(o) for o in mf.objects if exists[o]),
            ", ".join(str(o) for o in missing),
        )
    )


def baseline_refusal(mf, exists):
    missing = [o for o in mf.objects if not exists[o]]
    if missing:
        return "cannot baseline %s: objects missing: %s; apply it instead" % (
            mf.name,
            ", ".join(str(o) for o in missing),
        )
    return None


def lock_key(schema, table):
    """Signed 64-bit advisory lock key for one tracking table."""
    digest = hashlib.sha256(("%s:%s.%s" % (LOCK_NAMESPACE, schema, table)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ---------------------------------------------------------------------------
# Batching (pure)
# ---------------------------------------------------------------------------


class Batch:
    """One step of a run, committed (or rolled back) as a whole.

    ``files`` run in order; a transactional batch also creates or upgrades
    the tracking table (``setup``) and records the ``adopt`` files, so that
    a failure anywhere in it leaves the database and the table as they were.
    A non-transactional batch is one file, run statement by statement.
    """

    __slots__ = ("files", "transactional", "adopt", "setup")

    def __init__(self, files, transactional=True, adopt=None, setup=False):
        self.files = list(files)
        self.transactional = transactional
        self.adopt = list(adopt or [])
        self.setup = setup

    @property
    def names(self):
        return [mf.name for mf in self.files]

    def __repr__(self):  # pragma: no cover - debugging aid
        return "Batch(%r, transactional=%r, adopt=%r, setup=%r)" % (
            self.names, self.transactional, [mf.name for mf in self.adopt], self.setup)


def plan_batches(to_apply, to_adopt=(), setup=False):
    """Group the files to apply, in order, into the steps the runner commits.

    Consecutive files that can run in a transaction share one; a file that
    cannot (see ``MigrationFile.no_transaction``) is a step of its own, and a
    file whose effect needs a commit before use (``ends_batch``) is the last
    of its batch. The tracking-table work and the adopted records go into
    the first step, which is a transaction of their own when the first file
    cannot be one.
    """
    batches = []
    open_batch = False
    for mf in to_apply:
        if mf.transactional and open_batch:
            batches[-1].files.append(mf)
        else:
            batches.append(Batch([mf], mf.transactional))
        open_batch = mf.transactional and not mf.ends_batch
    if (to_adopt or setup) and (not batches or not batches[0].transactional):
        batches.insert(0, Batch([]))
    if batches:
        batches[0].adopt = list(to_adopt)
        batches[0].setup = setup
    return batches


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def error_position(exc):
    """1-based character position of a psycopg2 error in the query sent, or None."""
    diag = getattr(exc, "diag", None)
    pos = getattr(diag, "statement_position", None) if diag is not None else None
    try:
        return int(pos)
    except (TypeError, ValueError):
        return None


def error_location(text, exc, offset=0):
    """' at line N (character P)' of `text` for an error in the query `text[offset:]`, or ''."""
    pos = error_position(exc)
    if pos is None:
        return ""
    pos += offset
    return " at line %d (character %d)" % (line_of(text, pos - 1), pos)


def pg_error_line(exc):
    """The server's message in one line, plus where in a function body it happened."""
    diag = getattr(exc, "diag", None)
    first = getattr(diag, "message_primary", None) if diag is not None else None
    if not first:
        first = re.sub(r"^(?:ERROR|FATAL):\s+", "", first_line(getattr(exc, "pgerror", None) or exc)
                       or exc.__class__.__name__)
    context = getattr(diag, "context", None) if diag is not None else None
    if context and context.strip():
        # innermost first: the statement, then the function and its line
        first += " (%s)" % ", ".join(line.strip() for line in context.strip().splitlines()[:2])
    return first


def batch_failure_message(batch, failed, where, error, rehearsal=False, skipped=()):
    """The one line of a failed step: the file, where, the server's error, what is left.

    `where` is error_location()'s text; `skipped` are the no-transaction
    files a rehearsal left out before this batch (a failure may come from
    depending on one of them).
    """
    if rehearsal:
        msg = "migration %s would fail%s: %s" % (failed.name, where, error)
        if skipped:
            msg += " (rehearsed without %s, which cannot run in a transaction)" % ", ".join(skipped)
        return msg + "; nothing was changed"
    msg = "migration %s failed%s: %s" % (failed.name, where, error)
    if not batch.transactional:
        return msg
    others = [name for name in batch.names if name != failed.name]
    if others:
        return msg + "; nothing of its batch was applied (%s rolled back with it)" % ", ".join(others)
    return msg + "; nothing of this file was applied"


def partial_failure_message(mf, error, where, ran, failed_reason=""):
    """The one line of a no-transaction file that failed; `ran` are the statements that did not."""
    msg = "migration %s (run without a transaction: %s) failed%s: %s; " % (
        mf.name, mf.no_transaction[1], where, error)
    if ran:
        msg += ("its first %d statement(s), up to line %d, stay applied and it was not recorded; "
                "finish or undo them by hand, then rerun" % (len(ran), ran[-1].line))
    else:
        msg += "nothing of it was applied"
    if failed_reason == "CREATE INDEX CONCURRENTLY":
        msg += " (a failed CREATE INDEX CONCURRENTLY leaves an INVALID index: drop it before rerunning)"
    return msg
