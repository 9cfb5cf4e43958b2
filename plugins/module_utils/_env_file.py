# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and rewriting ``KEY=value`` env files (private).

Used by the ``app_container`` module (to read the env file the app sees)
and by the ``env_set`` / ``env_get`` / ``env_parse`` / ``env_diff`` filters
(to change keys without touching anything else in the file).

Syntax understood, the common subset of ``docker --env-file`` and dotenv:

* blank lines and lines whose first non-blank character is ``#`` are kept
  as they are and carry no value;
* ``KEY=value``, optionally preceded by ``export `` and surrounded by
  blanks; only the first ``=`` separates key from value, so values may
  contain ``=``;
* a value wrapped in matching double or single quotes is read without the
  quotes (anything after the closing quote, such as `` # comment``, is kept
  but is not part of the value); an unquoted value is the rest of the line
  up to an inline comment (a ``#`` preceded by a blank), trailing blanks
  removed;
* a UTF-8 byte order mark at the start is ignored (and kept on rewrite);
* line endings (``\\n`` or ``\\r\\n``) are kept line by line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LINE_RE = re.compile(
    r"^(?P<lead>[ \t]*)(?P<export>export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)"
    r"(?P<eq>[ \t]*=[ \t]*)(?P<rest>.*?)(?P<eol>\r?\n|\r)?$",
    re.DOTALL,
)
# Keys whose values are never shown (diffs, reports, error messages).
# Broad on purpose: a key wrongly taken for a secret is only masked.
SECRET_KEY_RE = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
MASK = "********"


class EnvFileError(ValueError):
    """A value cannot be written or a key is invalid; message is safe to show."""


def is_secret_key(key):
    return bool(SECRET_KEY_RE.search(key or ""))


def mask_value(key, value):
    if value is None:
        return None
    return MASK if is_secret_key(key) else value


def _split_value(rest):
    """Return (value, quote, trailer) of the text right of ``=``."""
    stripped = rest.rstrip(" \t")
    if stripped[:1] in ("'", '"'):
        quote = stripped[0]
        end = stripped.find(quote, 1)
        if quote == '"':
            # a backslash-escaped double quote does not close the value
            idx = 1
            end = -1
            while idx < len(stripped):
                char = stripped[idx]
                if char == "\\":
                    idx += 2
                    continue
                if char == '"':
                    end = idx
                    break
                idx += 1
        if end > 0:
            return stripped[1:end], quote, rest[end + 1:]
    comment = re.search(r"[ \t]#", stripped)
    if comment:
        # unquoted: an inline comment starts at a '#' preceded by a blank (dotenv, shell)
        value = stripped[:comment.start()].rstrip(" \t")
        return value, "", rest[len(value):]
    return stripped, "", rest[len(stripped):]


def parse_line(line):
    """Return a dict describing one line, or None for comments/blank/other lines."""
    match = _LINE_RE.match(line)
    if not match:
        return None
    value, quote, trailer = _split_value(match.group("rest"))
    if quote == '"':
        value = value.replace('\\"', '"').replace("\\\\", "\\")
    return dict(
        key=match.group("key"),
        value=value,
        quote=quote,
        trailer=trailer,
        lead=match.group("lead"),
        export=match.group("export") or "",
        eq=match.group("eq"),
        eol=match.group("eol") or "",
    )


BOM = "\ufeff"


def _strip_bom(text):
    return text[len(BOM):] if text.startswith(BOM) else text


def parse(content):
    """Map every key to its value (the last occurrence wins, as in docker)."""
    values = {}
    for line in _strip_bom(content or "").splitlines(True):
        parsed = parse_line(line)
        if parsed is not None:
            values[parsed["key"]] = parsed["value"]
    return values


def get(content, key, default=None):
    return parse(content).get(key, default)


def _validate(values):
    if not isinstance(values, dict):
        raise EnvFileError("env values must be a dict of KEY: value, got %s" % type(values).__name__)
    clean = {}
    for key, value in values.items():
        key = str(key)
        if not KEY_RE.match(key):
            raise EnvFileError(
                "invalid env key %r: use letters, digits and underscores, not starting with a digit" % key
            )
        if value is None:
            raise EnvFileError("env key %s has no value; give a string (an empty string is allowed)" % key)
        if isinstance(value, bool):
            value = "true" if value else "false"
        value = str(value)
        if "\n" in value or "\r" in value or "\x00" in value:
            raise EnvFileError(
                "the value of %s contains a line break or NUL byte, which an env file cannot hold" % key)
        clean[key] = value
    return clean


def _render(value, quote, key):
    if quote == "'":
        if "'" in value:
            raise EnvFileError(
                "the value of %s contains a single quote but the line uses single quotes; "
                "change the line's quoting by hand first" % key
            )
        return "'%s'" % value
    if quote == '"':
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if value != value.strip() or "#" in value or value[:1] in ("'", '"'):
        # unquoted, it would be read differently: quote it like dotenv does
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    return value


def _newline_of(lines):
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return "\n"


def set_values(content, values):
    """Return ``content`` with each key of ``values`` set.

    Lines holding a key get only their value replaced (same ``export``,
    spacing, quoting and trailer); every occurrence of a repeated key is
    set. Keys not present are appended, in the order given, with the
    file's line ending. Everything else is kept byte for byte, so setting
    values a file already has returns it unchanged.
    """
    values = _validate(values)
    content = content or ""
    bom = BOM if content.startswith(BOM) else ""
    lines = content[len(bom):].splitlines(True)
    seen = set()
    out = []
    for line in lines:
        parsed = parse_line(line)
        if parsed is None or parsed["key"] not in values:
            out.append(line)
            continue
        key = parsed["key"]
        seen.add(key)
        if parsed["value"] == values[key]:
            out.append(line)
            continue
        out.append(
            parsed["lead"] + parsed["export"] + key + parsed["eq"]
            + _render(values[key], parsed["quote"], key) + parsed["trailer"] + parsed["eol"]
        )
    missing = [key for key in values if key not in seen]
    if missing:
        newline = _newline_of(lines)
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] = out[-1] + newline
        for key in missing:
            out.append("%s=%s%s" % (key, _render(values[key], "", key), newline))
    return bom + "".join(out)


def changes(content, values):
    """List what ``set_values`` would change, secrets masked.

    Each item: ``key``, ``before`` and ``after`` (values, masked for
    secret-looking keys; ``before`` is None for an appended key),
    ``before_line`` / ``after_line`` (the whole lines, same masking) and
    ``appended``.
    """
    values = _validate(values)
    current = {}
    lines = {}
    for line in _strip_bom(content or "").splitlines():
        parsed = parse_line(line)
        if parsed is not None:
            current[parsed["key"]] = parsed["value"]
            lines[parsed["key"]] = parsed
    result = []
    for key, value in values.items():
        if current.get(key) == value:
            continue
        old = lines.get(key)
        if old is None:
            before_line = None
            after_line = "%s=%s" % (key, _render(value, "", key))
        else:
            before_line = old["lead"] + old["export"] + key + old["eq"] + _render(
                old["value"], old["quote"], key) + old["trailer"]
            after_line = old["lead"] + old["export"] + key + old["eq"] + _render(
                value, old["quote"], key) + old["trailer"]
        if is_secret_key(key):
            before_line = None if before_line is None else "%s=%s" % (key, MASK)
            after_line = "%s=%s" % (key, MASK)
        result.append(dict(
            key=key,
            before=mask_value(key, current.get(key)),
            after=mask_value(key, value),
            before_line=before_line,
            after_line=after_line,
            appended=old is None,
        ))
    return result


def diff_text(content, values, path="env file"):
    """A small unified-style diff of the changed keys only (secrets masked)."""
    items = changes(content, values)
    if not items:
        return ""
    out = ["--- %s (before)" % path, "+++ %s (after)" % path]
    for item in items:
        if item["before_line"] is not None:
            out.append("-" + item["before_line"])
        out.append("+" + item["after_line"] + ("   (appended)" if item["appended"] else ""))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# The file on the Docker host: read and plan, then back up, journal and write
# (the env_file module, and the app_switch module inside the window)
# --------------------------------------------------------------------------


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def backup_name(path):
    """The same shape as ansible.builtin.copy's backup=true, so operators find it where they expect."""
    return "%s.%d.%s~" % (path, os.getpid(), time.strftime("%Y-%m-%d@%H:%M:%S"))


def write_like(path, data, st):
    """Write `data` to `path` atomically, with the owner, group and mode of `st`."""
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path))
    try:
        os.fchmod(fd, st.st_mode & 0o7777)
        # Not root: the file stays ours, as it was.
        with contextlib.suppress(PermissionError):
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class EnvWrite:
    """One planned write of an env file: `plan()` reads and checks it (nothing written, usable
    before a downtime window), `apply(journal)` backs it up, journals and writes it.

    Raises EnvFileError with one line naming the file and the fix; `result` is what the
    env_file module returns (changes, sha256s, masked previous values, the diff lines).
    """

    def __init__(self, path, values, backup=True, assume=None, diff=False):
        self.path = path
        self.values = {str(k): "" if v is None else str(v) for k, v in (values or {}).items()}
        self.backup = backup
        self.assume = {str(k): "" if v is None else str(v) for k, v in (assume or {}).items()}
        self.want_diff = diff
        self.result = {}
        self._st = None
        self._raw = None
        self._new_raw = None

    def plan(self):

        path = self.path
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                raise EnvFileError("env file %s is not a regular file; set dbops_env_file to the app's "
                                   "env file" % path)
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise EnvFileError("cannot read env file %s (%s); set dbops_env_file to the app's env file on "
                               "the Docker host and check its permissions"
                               % (path, exc.strerror or exc)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EnvFileError("env file %s is not UTF-8 (byte %d); save it as UTF-8"
                               % (path, exc.start)) from None
        try:
            if self.assume:
                text = set_values(text, self.assume)
                raw = text.encode("utf-8")
            new_text = set_values(text, self.values)
            items = changes(text, self.values)
        except EnvFileError as exc:
            raise EnvFileError("env file %s: %s" % (path, exc)) from None
        current = parse(text)
        new_raw = new_text.encode("utf-8")
        result = dict(
            changed=new_raw != raw,
            changes=[{k: item[k] for k in ("key", "before", "after", "appended")} for item in items],
            sha256_before=_sha256(raw),
            sha256_after=_sha256(new_raw),
            previous={key: mask_value(key, current.get(key)) for key in self.values},
            lines=diff_text(text, self.values, path).splitlines(),
        )
        if self.want_diff and result["changed"]:
            result["diff"] = dict(before_header="%s (before)" % path, after_header="%s (after)" % path,
                                  before="".join(i["before_line"] + "\n" for i in items if i["before_line"]),
                                  after="".join(i["after_line"] + "\n" for i in items))
        self._st, self._raw, self._new_raw = st, raw, new_raw
        self.result = result
        return result

    def apply(self, journal):
        """Write what plan() computed (nothing when unchanged); `journal(step, **details)` is called
        just before the write. Returns the result, with backup_file when a backup was made."""
        result, path, st = self.result, self.path, self._st
        if not result.get("changed"):
            return result
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path) or ".", os.W_OK):
            raise EnvFileError("env file %s (or its directory) is not writable by this user; run with become "
                               "or fix its permissions — nothing was changed" % path)
        backup = backup_name(path) if self.backup else None
        if backup:
            shutil.copy2(path, backup)
            os.chmod(backup, st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(backup, st.st_uid, st.st_gid)
            result["backup_file"] = backup
        journal("env_write", file=path, backup=backup, sha256_before=result["sha256_before"],
                sha256_after=result["sha256_after"], previous=result["previous"],
                set={k: mask_value(k, v) for k, v in self.values.items()})
        write_like(path, self._new_raw, st)
        return result
