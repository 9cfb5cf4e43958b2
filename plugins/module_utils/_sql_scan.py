# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a SQL migration file says, read without a server (private).

A small lexer (``tokenize``) that knows exactly what PostgreSQL needs to tell
code from data: ``--`` and nested ``/* */`` comments, ``'...'`` and
``E'...'`` strings, ``"quoted"`` identifiers and ``$tag$`` dollar quotes. It
splits a file into top-level statements (``scan_sql``) without ever looking
inside a function body or a string, which is what lets us

* refuse transaction control (the runner owns the transactions),
* find the statements PostgreSQL refuses inside a transaction block
  (``no_transaction``), so that such a file runs alone, statement by
  statement,
* list the objects a file creates (``created_objects``), to verify a baseline,
* point at an unterminated string or comment before the server sees it.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------

_WORD_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"[0-9][0-9._eE]*")


class Token:
    """One lexical token.

    kind is word, qident, string, number, punct, backslash, comment (only
    when asked for) or unterminated (a string, identifier or comment that
    runs to the end of the file; value says which). ``pos``/``end`` are
    offsets in the text, so a statement's own text can be cut out.
    """

    __slots__ = ("kind", "value", "pos", "end")

    def __init__(self, kind, value, pos, end=None):
        self.kind = kind
        self.value = value
        self.pos = pos
        self.end = pos + len(value) if end is None else end

    @property
    def upper(self):
        return self.value.upper() if self.kind == "word" else None

    def __repr__(self):  # pragma: no cover - debugging aid
        return "Token(%s, %r, %d)" % (self.kind, self.value, self.pos)


class Statement:
    """Top-level statement: its code tokens (comments dropped), first line and span."""

    __slots__ = ("tokens", "line", "start", "end")

    def __init__(self, tokens, line):
        self.tokens = tokens
        self.line = line
        self.start = tokens[0].pos
        self.end = tokens[-1].end

    def words(self, count):
        """Upper-cased values of the first `count` tokens (None for non-words)."""
        words = [t.upper for t in self.tokens[:count]]
        return words + [None] * (count - len(words))

    def text(self, source):
        """The statement as written in `source`, without its ``;``."""
        return source[self.start:self.end]


def _skip_block_comment(text, i):
    """Index just after the comment opened at `i`, or None when it never closes."""
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
    return None


def _skip_quoted(text, i, quote, backslash=False):
    """Index just after the closing `quote` (doubled quotes escape), or None."""
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
    return None


def _quoted(text, start, body, quote, kind, what, backslash=False):
    """Token for a literal whose opening quote is at `body`; unterminated ones say so."""
    j = _skip_quoted(text, body, quote, backslash)
    if j is None:
        return Token("unterminated", what, start, len(text))
    if kind == "qident":
        return Token(kind, text[body + 1:j - 1].replace(quote * 2, quote), start, j)
    return Token(kind, text[start:j], start, j)


def tokenize(text, comments=False):
    """Yield the tokens of `text`; literals stay opaque, comments only when asked."""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        tok = None
        if text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            if comments:
                tok = Token("comment", text[i:j], i, j)
            else:
                i = j
                continue
        elif text.startswith("/*", i):
            j = _skip_block_comment(text, i)
            if j is None:
                tok = Token("unterminated", "block comment", i, n)
            elif comments:
                tok = Token("comment", text[i:j], i, j)
            else:
                i = j
                continue
        elif c == "'":
            tok = _quoted(text, i, i, "'", "string", "string")
        elif c in "eE" and text.startswith("'", i + 1):
            tok = _quoted(text, i, i + 1, "'", "string", "string", backslash=True)
        elif c in "uU" and text.startswith("&'", i + 1):
            tok = _quoted(text, i, i + 2, "'", "string", "string")
        elif c in "uU" and text.startswith('&"', i + 1):
            tok = _quoted(text, i, i + 2, '"', "qident", "quoted identifier")
        elif c == '"':
            tok = _quoted(text, i, i, '"', "qident", "quoted identifier")
        elif c == "$":
            m = _DOLLAR_TAG.match(text, i)
            if m:
                tag = m.group(0)
                end = text.find(tag, m.end())
                if end < 0:
                    tok = Token("unterminated", "dollar-quoted string %s" % tag, i, n)
                else:
                    tok = Token("string", text[i:end + len(tag)], i)
            else:
                tok = Token("punct", c, i)
        elif _WORD_START.match(c):
            tok = Token("word", _WORD.match(text, i).group(0), i)
        elif c.isdigit():
            tok = Token("number", _NUMBER.match(text, i).group(0), i)
        elif c == "\\":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "!?"):
                j += 1
            tok = Token("backslash", text[i:j], i)
        else:
            tok = Token("punct", c, i)
        yield tok
        i = tok.end


def line_of(text, pos):
    """1-based line number of character offset `pos` in `text`."""
    return text.count("\n", 0, max(pos, 0)) + 1


def scan_sql(text):
    """Split `text` into top-level statements (a list of Statement).

    A ``;`` ends a statement, except inside parentheses (the actions of a
    ``CREATE RULE ... DO (a; b)``) and inside a SQL-standard function body
    (``BEGIN ATOMIC ... END``), where CASE ... END pairs are counted too.
    The runner sends the statements one by one, so this split must be the
    server's.
    """
    statements = []
    current = []
    atomic_depth = 0
    parens = 0
    for tok in tokenize(text):
        if tok.kind == "punct" and tok.value in "()":
            parens = max(0, parens + (1 if tok.value == "(" else -1))
        if tok.kind == "punct" and tok.value == ";" and atomic_depth == 0 and parens == 0:
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


def unterminated(text, statements):
    """(line, what) of the first string, identifier or comment left open, or None."""
    for st in statements:
        for tok in st.tokens:
            if tok.kind == "unterminated":
                return line_of(text, tok.pos), tok.value
    return None


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


# The comment that asks for a file to run outside a transaction, for a
# statement the list below does not know (a function that runs VACUUM
# through dblink, a command of a newer PostgreSQL...).
NO_TRANSACTION_MARKER = "dbops: no-transaction"
_MARKER_RE = re.compile(r"^(?:--|/\*)\s*dbops:\s*no-transaction\b", re.IGNORECASE)


def statement_needs_no_transaction(st):
    """Why PostgreSQL refuses `st` inside a transaction block, or None."""
    w = st.words(4)
    words = [t.upper for t in st.tokens]
    head = w[0]
    if head == "VACUUM":
        return "VACUUM"
    if head == "ALTER" and w[1] == "SYSTEM":
        return "ALTER SYSTEM"
    if head in ("CREATE", "DROP") and w[1] in ("DATABASE", "TABLESPACE", "SUBSCRIPTION"):
        return "%s %s" % (head, w[1])
    if head == "CREATE" and "INDEX" in w[1:3] and "CONCURRENTLY" in words[2:4]:
        return "CREATE INDEX CONCURRENTLY"
    if head == "DROP" and w[1] == "INDEX" and w[2] == "CONCURRENTLY":
        return "DROP INDEX CONCURRENTLY"
    if head == "REINDEX":
        # REINDEX [ (options) ] {INDEX|TABLE|SCHEMA|DATABASE|SYSTEM} [CONCURRENTLY] name
        if "CONCURRENTLY" in words:
            return "REINDEX CONCURRENTLY"
        if "DATABASE" in words or "SYSTEM" in words:
            return "REINDEX DATABASE"
    if head == "ALTER" and w[1] == "TABLE" and "DETACH" in words and words[-1] == "CONCURRENTLY":
        return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
    if head == "CLUSTER" and len(st.tokens) == 1:
        return "CLUSTER"  # without a table it reclusters the whole database
    return None


def commits_first(statements):
    """(line, what) of a statement whose effect later files can use only once committed.

    A value added to an enum (``ALTER TYPE ... ADD VALUE``) cannot be used in
    the transaction that added it ("unsafe use of new value"), so a later
    file using it needs the batch committed in between.
    """
    for st in statements:
        words = [t.upper for t in st.tokens]
        if words[:2] == ["ALTER", "TYPE"] and "ADD" in words and "VALUE" in words:
            return st.line, "ALTER TYPE ... ADD VALUE"
    return None


def no_transaction(text, statements):
    """(line, reason) when the file cannot run inside one transaction, else None.

    Either the marker comment (anywhere at top level, ``-- dbops:
    no-transaction``) or the first statement PostgreSQL refuses in a
    transaction block.
    """
    for tok in tokenize(text, comments=True):
        if tok.kind == "comment" and _MARKER_RE.match(tok.value):
            return line_of(text, tok.pos), "the %s marker" % NO_TRANSACTION_MARKER
    for st in statements:
        reason = statement_needs_no_transaction(st)
        if reason:
            return st.line, reason
    return None


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
