# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tracked SQL migrations: file scanning, planning and the runner (private).

Layout of this file:

* a small SQL lexer (``scan_sql``) that knows exactly what PostgreSQL needs
  to tell code from data: ``--`` and nested ``/* */`` comments, ``'...'`` and
  ``E'...'`` strings, ``"quoted"`` identifiers and ``$tag$`` dollar quotes.
  It splits a file into top-level statements so we can refuse transaction
  control and list the objects a file creates, without ever looking inside a
  function body or a string;
* ``created_objects``: the CREATE parser used to verify a baseline;
* pure planning helpers (checksums, pending selection, adopt decisions),
  unit-tested without a database;
* ``MigrationRunner``: the part that talks to PostgreSQL (tracking table,
  advisory lock, one transaction per file).
"""

from __future__ import annotations

import hashlib
import os
import re
import time

# One guarded import for every module: _connection holds it.
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import psycopg2, sql

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
# Lexer
# ---------------------------------------------------------------------------

_WORD_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"[0-9][0-9._eE]*")


class Token:
    """One lexical token: kind is word, qident, string, number, punct or backslash."""

    __slots__ = ("kind", "value", "pos")

    def __init__(self, kind, value, pos):
        self.kind = kind
        self.value = value
        self.pos = pos

    @property
    def upper(self):
        return self.value.upper() if self.kind == "word" else None

    def __repr__(self):  # pragma: no cover - debugging aid
        return "Token(%s, %r, %d)" % (self.kind, self.value, self.pos)


class Statement:
    """Top-level statement: its code tokens (comments dropped) and first line."""

    __slots__ = ("tokens", "line")

    def __init__(self, tokens, line):
        self.tokens = tokens
        self.line = line

    def words(self, count):
        """Upper-cased values of the first `count` tokens (None for non-words)."""
        words = [t.upper for t in self.tokens[:count]]
        return words + [None] * (count - len(words))


def _skip_block_comment(text, i):
    depth = 0
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_quoted(text, i, quote, backslash=False):
    """Return the index just after the closing `quote` (doubled quotes escape)."""
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def tokenize(text):
    """Yield code tokens of `text`; comments are dropped, literals kept opaque."""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif c == "'":
            j = _skip_quoted(text, i, "'")
            yield Token("string", text[i:j], i)
            i = j
        elif c in "eE" and text.startswith("'", i + 1):
            j = _skip_quoted(text, i + 1, "'", backslash=True)
            yield Token("string", text[i:j], i)
            i = j
        elif c in "uU" and text.startswith("&'", i + 1):
            j = _skip_quoted(text, i + 2, "'")
            yield Token("string", text[i:j], i)
            i = j
        elif c in "uU" and text.startswith('&"', i + 1):
            j = _skip_quoted(text, i + 2, '"')
            yield Token("qident", text[i + 3:j - 1].replace('""', '"'), i)
            i = j
        elif c == '"':
            j = _skip_quoted(text, i, '"')
            yield Token("qident", text[i + 1:j - 1].replace('""', '"'), i)
            i = j
        elif c == "$":
            m = _DOLLAR_TAG.match(text, i)
            if m:
                tag = m.group(0)
                end = text.find(tag, m.end())
                j = n if end < 0 else end + len(tag)
                yield Token("string", text[i:j], i)
                i = j
            else:
                yield Token("punct", c, i)
                i += 1
        elif _WORD_START.match(c):
            m = _WORD.match(text, i)
            yield Token("word", m.group(0), i)
            i = m.end()
        elif c.isdigit():
            m = _NUMBER.match(text, i)
            yield Token("number", m.group(0), i)
            i = m.end()
        elif c == "\\":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "!?"):
                j += 1
            yield Token("backslash", text[i:j], i)
            i = j
        else:
            yield Token("punct", c, i)
            i += 1


def line_of(text, pos):
    """1-based line number of character offset `pos` in `text`."""
    return text.count("\n", 0, max(pos, 0)) + 1


def scan_sql(text):
    """Split `text` into top-level statements (a list of Statement).

    A ``;`` ends a statement, except inside a SQL-standard function body
    (``BEGIN ATOMIC ... END``), where CASE ... END pairs are counted too.
    """
    statements = []
    current = []
    atomic_depth = 0
    for tok in tokenize(text):
        if tok.kind == "punct" and tok.value == ";" and atomic_depth == 0:
            if current:
                statements.append(Statement(current, line_of(text, current[0].pos)))
            current = []
            continue
        word = tok.upper
        if word is not None and current:
            if atomic_depth:
                if word == "CASE":
                    atomic_depth += 1
                elif word == "END":
                    atomic_depth -= 1
            elif (
                word == "ATOMIC"
                and current[-1].upper == "BEGIN"
                and current[0].upper == "CREATE"
            ):
                atomic_depth = 1
        current.append(tok)
    if current:
        statements.append(Statement(current, line_of(text, current[0].pos)))
    return statements


# ---------------------------------------------------------------------------
# What a file does: transaction control and created objects
# ---------------------------------------------------------------------------


def transaction_control(statements):
    """Return [(line, text)] of top-level statements that end or open a transaction.

    Each file runs inside a transaction the runner owns, so BEGIN, START
    TRANSACTION, COMMIT, END, ROLLBACK (but not ROLLBACK TO SAVEPOINT), ABORT
    and the two-phase commands are refused. psql meta-commands (``\\i``,
    ``\\set``...) are refused as well: they are not SQL.
    """
    found = []
    for st in statements:
        first = st.words(3)
        head = first[0]
        bad = None
        if st.tokens[0].kind == "backslash":
            bad = "psql meta-command %s" % st.tokens[0].value
        elif head in ("BEGIN", "COMMIT", "END", "ABORT"):
            bad = " ".join(w for w in first if w)
            if head == "BEGIN" or head == "END":
                bad = head
        elif head == "ROLLBACK" and first[1] != "TO":
            bad = "ROLLBACK"
        elif head == "START" and first[1] == "TRANSACTION":
            bad = "START TRANSACTION"
        elif head == "PREPARE" and first[1] == "TRANSACTION":
            bad = "PREPARE TRANSACTION"
        else:
            for tok in st.tokens:
                if tok.kind == "backslash":
                    bad = "psql meta-command %s" % tok.value
                    break
        if bad:
            found.append((st.line, bad))
    return found


def fold_identifier(tok):
    """Name PostgreSQL stores for an identifier token (unquoted: ASCII lower-cased)."""
    if tok.kind == "qident":
        return tok.value
    return "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in tok.value)


def _read_name(tokens, i):
    """Read `ident[.ident[.ident]]` at tokens[i]; return ((schema, name), next_i) or (None, i)."""
    parts = []
    while i < len(tokens) and tokens[i].kind in ("word", "qident"):
        parts.append(fold_identifier(tokens[i]))
        i += 1
        if i < len(tokens) and tokens[i].kind == "punct" and tokens[i].value == ".":
            i += 1
            continue
        break
    if not parts:
        return None, i
    schema = parts[-2] if len(parts) >= 2 else None
    return (schema, parts[-1]), i


class DbObject:
    """An object a migration creates (what baseline/adopt verify)."""

    __slots__ = ("kind", "schema", "name", "on", "replace", "line")

    def __init__(self, kind, schema, name, on=None, replace=False, line=None):
        self.kind = kind
        self.schema = schema
        self.name = name
        self.on = on  # (schema, table) for indexes and triggers
        self.replace = replace  # CREATE OR REPLACE: existence proves little
        self.line = line

    @property
    def qualified(self):
        return "%s.%s" % (self.schema, self.name) if self.schema else self.name

    def __str__(self):
        return "%s %s" % (self.kind, self.qualified)

    def __repr__(self):  # pragma: no cover - debugging aid
        return "DbObject(%r)" % str(self)

    def __eq__(self, other):
        return isinstance(other, DbObject) and (self.kind, self.schema, self.name) == (
            other.kind,
            other.schema,
            other.name,
        )

    def __hash__(self):
        return hash((self.kind, self.schema, self.name))


_KINDS = {
    "TABLE": "table",
    "VIEW": "view",
    "INDEX": "index",
    "SEQUENCE": "sequence",
    "FUNCTION": "function",
    "PROCEDURE": "procedure",
    "TYPE": "type",
    "DOMAIN": "type",
    "TRIGGER": "trigger",
    "SCHEMA": "schema",
}


def parse_create(st):
    """Return the DbObject a CREATE statement defines, or None.

    Grammar understood (keywords case-insensitive, names quoted or not,
    optionally schema-qualified):

        CREATE [OR REPLACE] [TEMP|TEMPORARY|UNLOGGED] [UNIQUE] [CONSTRAINT] [RECURSIVE]
            {TABLE | INDEX [CONCURRENTLY] | VIEW | MATERIALIZED VIEW | SEQUENCE
             | FUNCTION | PROCEDURE | TYPE | DOMAIN | TRIGGER | SCHEMA}
            [IF NOT EXISTS] name ...

    Temporary objects and unnamed indexes are ignored (nothing to verify).
    """
    toks = st.tokens
    if not toks or toks[0].upper != "CREATE":
        return None
    i = 1
    replace = False
    temp = False

    def word(k):
        return toks[k].upper if k < len(toks) else None

    if word(i) == "OR" and word(i + 1) == "REPLACE":
        replace = True
        i += 2
    if word(i) in ("GLOBAL", "LOCAL") and word(i + 1) in ("TEMP", "TEMPORARY"):
        i += 1
    if word(i) in ("TEMP", "TEMPORARY"):
        temp = True
        i += 1
    if word(i) in ("UNLOGGED", "UNIQUE", "CONSTRAINT", "RECURSIVE"):
        i += 1
    kw = word(i)
    if kw == "MATERIALIZED" and word(i + 1) == "VIEW":
        kind = "materialized view"
        i += 2
    elif kw in _KINDS:
        kind = _KINDS[kw]
        i += 1
    else:
        return None
    if kind == "index" and word(i) == "CONCURRENTLY":
        i += 1
    if word(i) == "IF" and word(i + 1) == "NOT" and word(i + 2) == "EXISTS":
        i += 3
    if kind == "index" and word(i) == "ON":
        return None  # CREATE INDEX ON t (...): PostgreSQL picks the name
    if kind == "schema" and word(i) == "AUTHORIZATION":
        return None
    name, i = _read_name(toks, i)
    if name is None or temp:
        return None
    on = None
    if kind in ("index", "trigger"):
        # the table follows the first top-level ON
        depth = 0
        for k in range(i, len(toks)):
            t = toks[k]
            if t.kind == "punct" and t.value == "(":
                depth += 1
            elif t.kind == "punct" and t.value == ")":
                depth -= 1
            elif depth == 0 and t.upper == "ON":
                k += 1
                if word(k) == "ONLY":
                    k += 1
                on = _read_name(toks, k)[0]
                break
        if kind == "index" and on and on[0] and not name[0]:
            name = (on[0], name[1])  # an index lives in its table's schema
    return DbObject(kind, name[0], name[1], on=on, replace=replace, line=st.line)


def created_objects(statements):
    """Objects created by top-level CREATE statements, in file order, without duplicates."""
    seen = []
    for st in statements:
        obj = parse_create(st)
        if obj is not None and obj not in seen:
            seen.append(obj)
    return seen


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
                "migration %s is not valid UTF-8 (byte %d); save it as UTF-8" % (name, exc.start)
            ) from None
        # A BOM is not SQL; positions stay right because lines do not move.
        self.text = text[1:] if text.startswith("\ufeff") else text
        self.statements = scan_sql(self.text)
        self.objects = created_objects(self.statements)

    @property
    def stem(self):
        return self.name[:-4] if self.name.endswith(".sql") else self.name


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
        with open(path, "rb") as fh:
            files.append(MigrationFile(name, path, fh.read()))
    return files


def refuse_transaction_control(files):
    for mf in files:
        found = transaction_control(mf.statements)
        if found:
            line, what = found[0]
            raise MigrationError(
                "migration %s contains %s on line %d; each migration already runs in its "
                "own transaction, remove transaction control (and psql meta-commands) "
                "from the file" % (mf.name, what, line)
            )


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


def _fmt_when(value):
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
                    applied_at=_fmt_when(rec.applied_at),
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


def error_location(text, exc):
    """' at line N (position P)' from a psycopg2 error, or ''."""
    diag = getattr(exc, "diag", None)
    pos = getattr(diag, "statement_position", None) if diag is not None else None
    try:
        pos = int(pos)
    except (TypeError, ValueError):
        return ""
    return " at line %d (character %d)" % (line_of(text, pos - 1), pos)


def pg_error_line(exc):
    """First line of a PostgreSQL error, plus where in a function body it happened."""
    text = (getattr(exc, "pgerror", None) or str(exc) or exc.__class__.__name__).strip()
    first = text.splitlines()[0] if text else exc.__class__.__name__
    diag = getattr(exc, "diag", None)
    context = getattr(diag, "context", None) if diag is not None else None
    if context and context.strip():
        # innermost first: the statement, then the function and its line
        first += " (%s)" % ", ".join(line.strip() for line in context.strip().splitlines()[:2])
    return first


# ---------------------------------------------------------------------------
# Database side
# ---------------------------------------------------------------------------


class MigrationRunner:
    """Apply, baseline or report migrations on one database connection.

    The connection is autocommit; each file gets an explicit transaction.
    """

    def __init__(self, conn, schema, table, applied_by, check_mode=False):
        self.conn = conn
        self.schema = schema
        self.table = table
        self.applied_by = applied_by
        self.check_mode = check_mode
        self.table_sql = sql.Identifier(schema, table)
        self.columns = None  # None: table absent
        self.result = dict(
            changed=False,
            applied=[],
            adopted=[],
            pending=[],
            would_adopt=[],
            already_applied=[],
            untracked_checksum=[],
            missing_files=[],
            tracking_table_created=False,
            tracking_table_upgraded=[],
            lock_wait_ms=0,
        )
        self._locked = False
        self.warnings = []
        # File text is UTF-8; make the server read it as such whatever the
        # database's default client encoding.
        conn.set_client_encoding("UTF8")

    # -- small helpers -----------------------------------------------------
    def _query(self, query, params=None):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _label(self):
        return "%s.%s" % (self.schema, self.table)

    # -- lock --------------------------------------------------------------
    def acquire_lock(self, timeout):
        key = lock_key(self.schema, self.table)
        start = time.monotonic()
        deadline = start + max(timeout, 0)
        delay = 0.05
        while True:
            if self._query("SELECT pg_try_advisory_lock(%s)", (key,))[0][0]:
                self._locked = True
                self.result["lock_wait_ms"] = int((time.monotonic() - start) * 1000)
                return
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.5)
        holder = self.lock_holder(key)
        dbname = self.conn.get_dsn_parameters().get("dbname")
        raise MigrationError(
            "another migration run holds the lock on database %s (%s); retry later"
            % (dbname, holder),
            lock_wait_ms=int((time.monotonic() - start) * 1000),
        )

    def lock_holder(self, key):
        rows = self._query(
            "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown'), a.backend_start, "
            "a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        if not rows:
            return "holder not visible to this role"
        pid, app, since, user = rows[0]
        return "pid %s, application %s, user %s, since %s" % (pid, app, user, _fmt_when(since))

    def release_lock(self):
        if not self._locked:
            return
        self._locked = False
        try:
            if self.conn.closed:
                return
            if self.conn.get_transaction_status() != 0:  # not idle: leave the failed transaction
                self.conn.rollback()
            self._query("SELECT pg_advisory_unlock(%s)", (lock_key(self.schema, self.table),))
        except psycopg2.Error:
            pass  # closing the connection releases a session lock anyway

    # -- tracking table ----------------------------------------------------
    def inspect_table(self):
        """Fill self.columns (list of names) or None when the table is absent."""
        rows = self._query(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.schema, self.table),
        )
        if not rows:
            other = self._query(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (self.schema, self.table),
            )
            if other:
                raise MigrationError(
                    "%s exists but is not a table (relkind %s); set the table option to "
                    "another name" % (self._label(), other[0][0])
                )
            self.columns = None
            return
        self.columns = [r[0] for r in rows]
        if "name" not in self.columns:
            raise MigrationError(
                "tracking table %s exists but has no name column (columns: %s); set the "
                "table option to another name" % (self._label(), ", ".join(self.columns))
            )

    def missing_columns(self):
        if self.columns is None:
            return []
        return [col for col, dummy in TRACKING_COLUMNS if col not in self.columns]

    def read_records(self):
        if self.columns is None:
            return []
        cols = []
        for col in ("name", "checksum", "applied_at", "adopted"):
            if col in self.columns:
                cols.append(sql.Identifier(col))
            else:
                cols.append(sql.SQL("NULL"))
        order = [sql.Identifier(c) for c in ("applied_at", "name") if c in self.columns]
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(cols), self.table_sql, sql.SQL(", ").join(order)
        )
        records = []
        for name, checksum, applied_at, adopted in self._query(query):
            if name is None:
                continue
            records.append(Record(str(name), checksum, applied_at, bool(adopted)))
        return records

    def ensure_table(self):
        """Create or upgrade the tracking table (caller checks check_mode)."""
        if self.columns is None:
            with self.conn.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    cur.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                    )
                    cur.execute(
                        sql.SQL("CREATE TABLE {} ({})").format(
                            self.table_sql,
                            sql.SQL(", ").join(
                                sql.SQL("{} " + ddl).format(sql.Identifier(col))
                                for col, ddl in TRACKING_COLUMNS
                            ),
                        )
                    )
                    cur.execute("COMMIT")
                except psycopg2.Error:
                    cur.execute("ROLLBACK")
                    raise
            self.columns = [col for col, dummy in TRACKING_COLUMNS]
            self.result["tracking_table_created"] = True
            return
        missing = self.missing_columns()
        if not missing:
            return
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                for col, ddl in TRACKING_COLUMNS:
                    if col in missing:
                        cur.execute(
                            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + ddl.replace(
                                " PRIMARY KEY", "")).format(self.table_sql, sql.Identifier(col))
                        )
                cur.execute("COMMIT")
            except psycopg2.Error:
                cur.execute("ROLLBACK")
                raise
        self.columns.extend(missing)
        self.result["tracking_table_upgraded"] = missing

    # -- object checks -----------------------------------------------------
    def object_exists(self, obj):
        def regclass_text(schema, name):
            quoted = '"%s"' % name.replace('"', '""')
            return '"%s".%s' % (schema.replace('"', '""'), quoted) if schema else quoted

        if obj.kind in ("table", "view", "materialized view", "index", "sequence"):
            relkinds = {
                "table": ("r", "p", "f"),
                "view": ("v",),
                "materialized view": ("m",),
                "index": ("i", "I"),
                "sequence": ("S",),
            }[obj.kind]
            rows = self._query(
                "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (regclass_text(obj.schema, obj.name),),
            )
            return bool(rows) and rows[0][0] in relkinds
        if obj.kind in ("function", "procedure"):
            query = (
                "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname = %s AND "
            )
            if obj.schema:
                return bool(self._query(query + "n.nspname = %s", (obj.name, obj.schema)))
            return bool(self._query(query + "pg_function_is_visible(p.oid)", (obj.name,)))
        if obj.kind == "type":
            query = (
                "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE t.typname = %s AND "
            )
            if obj.schema:
                return bool(self._query(query + "n.nspname = %s", (obj.name, obj.schema)))
            return bool(self._query(query + "pg_type_is_visible(t.oid)", (obj.name,)))
        if obj.kind == "trigger":
            if not obj.on:
                return False
            return bool(
                self._query(
                    "SELECT 1 FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal "
                    "AND tgrelid = to_regclass(%s)",
                    (obj.name, regclass_text(obj.on[0], obj.on[1])),
                )
            )
        if obj.kind == "schema":
            return bool(self._query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (obj.name,)))
        return False  # pragma: no cover - parser yields only the kinds above

    def existence(self, mf):
        return {obj: self.object_exists(obj) for obj in mf.objects}

    # -- writes ------------------------------------------------------------
    def _insert(self, cur, name, checksum, execution_ms, adopted):
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (name, applied_at, checksum, applied_by, execution_ms, adopted) "
                "VALUES (%s, now(), %s, %s, %s, %s)"
            ).format(self.table_sql),
            (name, checksum, self.applied_by, execution_ms, adopted),
        )

    def apply_file(self, mf):
        """Run one file and record it, all in one transaction; return its duration in ms."""
        step = "run"
        elapsed = None
        try:
            with self.conn.cursor() as cur:
                cur.execute("BEGIN")
                start = time.monotonic()
                if mf.statements:
                    cur.execute(mf.text)
                elapsed = int((time.monotonic() - start) * 1000)
                step = "record"
                self._insert(cur, mf.name, mf.sha256, elapsed, False)
                step = "commit"
                cur.execute("COMMIT")
        except psycopg2.Error as exc:
            self._rollback_quietly()
            if step == "run":
                hint = ""
                if getattr(exc, "pgcode", None) in ("42P07", "42710", "42723", "42P06"):
                    hint = (
                        "; if it was applied by hand, record it with action=baseline "
                        "or adopt_existing=true"
                    )
                msg = "migration %s failed%s: %s; nothing of this file was applied%s" % (
                    mf.name, error_location(mf.text, exc), pg_error_line(exc), hint)
            else:
                msg = "migration %s could not be recorded in %s (%s): %s; nothing of this " \
                    "file was applied" % (mf.name, self._label(), step, pg_error_line(exc))
            raise MigrationError(msg, failed=mf.name, pgcode=getattr(exc, "pgcode", None)) from exc
        # Session settings a file changed (search_path, role...) must not leak
        # into the next file; RESET ALL keeps the session's advisory lock.
        self._query_noresult("RESET ALL")
        return elapsed

    def _rollback_quietly(self):
        try:
            if not self.conn.closed and self.conn.get_transaction_status() != 0:
                self.conn.rollback()
        except psycopg2.Error:
            pass

    def _query_noresult(self, query):
        with self.conn.cursor() as cur:
            cur.execute(query)

    def record_adopted(self, files):
        """Record files as applied without running them, in one transaction."""
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                for mf in files:
                    self._insert(cur, mf.name, mf.sha256, None, True)
                cur.execute("COMMIT")
            except psycopg2.Error as exc:
                cur.execute("ROLLBACK")
                raise MigrationError(
                    "could not record %s in %s: %s"
                    % (", ".join(mf.name for mf in files), self._label(), pg_error_line(exc))
                ) from exc

    # -- the run -----------------------------------------------------------
    def run(self, files, action, names, target, adopt_existing, lock_timeout):
        res = self.result
        refuse_transaction_control(files)
        writes = action != "status" and not self.check_mode
        try:
            if writes:
                self.acquire_lock(lock_timeout)
            self.inspect_table()
            records = self.read_records()
            applied, res["missing_files"] = match_records(files, records)
            res["already_applied"] = [mf.name for mf in files if mf.name in applied]
            untracked, mismatches = checksum_problems(files, applied)
            res["untracked_checksum"] = untracked
            if mismatches:
                raise MigrationError(mismatch_message(mismatches), checksum_mismatches=mismatches)

            chosen = select_files(files, applied, names, target, action)
            if action == "baseline":
                to_apply, to_adopt = [], chosen
                problems = [baseline_refusal(mf, self.existence(mf)) for mf in chosen]
                problems = [p for p in problems if p]
                if problems:
                    raise MigrationError("; ".join(problems))
                self.warnings.extend(
                    "%s creates no table, index, view, function, sequence, type or trigger "
                    "the module can verify; recorded on your word" % mf.name
                    for mf in chosen if not mf.objects
                )
            elif adopt_existing:
                to_apply, to_adopt = [], []
                for mf in chosen:
                    if adopt_decision(mf, self.existence(mf)) == "adopt":
                        to_adopt.append(mf)
                    else:
                        to_apply.append(mf)
            else:
                to_apply, to_adopt = chosen, []

            table_work = self.columns is None or bool(self.missing_columns())
            if not writes:
                res["pending"] = [mf.name for mf in to_apply]
                res["would_adopt"] = [mf.name for mf in to_adopt]
                if action != "status":
                    res["changed"] = bool(to_apply or to_adopt or table_work)
                    if self.columns is None:
                        res["tracking_table_created"] = True
                    else:
                        res["tracking_table_upgraded"] = self.missing_columns()
                return res

            self.ensure_table()
            res["changed"] = table_work
            if to_adopt:
                self.record_adopted(to_adopt)
                res["adopted"] = [mf.name for mf in to_adopt]
                res["changed"] = True
            for index, mf in enumerate(to_apply):
                try:
                    elapsed = self.apply_file(mf)
                except MigrationError as exc:
                    res["pending"] = [m.name for m in to_apply[index:]]
                    exc.details.update(res)
                    raise
                res["applied"].append(dict(name=mf.name, sha256=mf.sha256, execution_ms=elapsed))
                res["changed"] = True
            return res
        except psycopg2.Error as exc:
            raise MigrationError(
                "database error while working on %s: %s" % (self._label(), pg_error_line(exc)),
                **res
            ) from exc
        finally:
            self.release_lock()
