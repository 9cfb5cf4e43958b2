#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: env_file
short_description: Set keys of an app's KEY=value env file, with a backup, a masked diff and a journal entry
version_added: 0.2.0
author: qadhya platform team (@qadhya)
description:
  - Sets the keys of O(values) in an env file (the C(.env) an app or C(docker run --env-file) reads),
    changing only the value of those lines - every other line, comment, C(export) prefix, quoting,
    line ending and byte order mark stays as it was. A key that is missing is appended.
  - Before writing, keeps a timestamped copy of the old file beside it (same owner and mode), then
    writes the new content through a temporary file in the same directory and an atomic rename, with
    the file's owner, group and mode kept.
  - In check mode it reads and checks the file and reports what would change; with C(--diff) the
    diff shows only the changed keys' lines, values of secret-looking keys masked.
  - When O(journal) is given, the write is recorded in the run's undo journal before it happens
    (file, backup, sha256 before and after), so a rollback can put the file back byte for byte.
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.DIFF
  - qadhya.dbops.attributes.JOURNAL
options:
  path:
    description: The env file on the Docker host. It must exist and be a regular file.
    type: path
    required: true
  values:
    description: "Keys and the values they must have, for example C({DB_NAME: qadhya})."
    type: dict
    required: true
  backup:
    description: Keep a copy of the old file, C(<path>.<pid>.<date>@<time>~), before writing.
    type: bool
    default: true
  assume:
    description:
      - In check mode only, keys the file is taken to hold already - the edits a run makes before this
        one, which check mode only planned - so that the reported change and diff are the ones a real
        run would make. Ignored outside check mode.
    type: dict
    default: {}
seealso:
  - module: qadhya.dbops.app_container
"""

EXAMPLES = r"""
- name: Point the app at the consolidated database
  qadhya.dbops.env_file:
    path: /opt/moncabinet/.env
    values:
      DB_NAME: qadhya
  no_log: true   # the module never returns secret values, but the file holds DB_PASSWORD

- name: Show what would change, before the downtime window
  qadhya.dbops.env_file:
    path: /opt/moncabinet/.env
    values:
      DB_NAME: qadhya
  check_mode: true
  register: staged
"""

RETURN = r"""
changes:
  description: One item per key whose value changes (values of secret-looking keys masked).
  returned: always
  type: list
  elements: dict
  sample: [{"key": "DB_NAME", "before": "moncabinet", "after": "qadhya", "appended": false}]
backup_file:
  description: The copy of the old file, when one was written.
  returned: when changed and O(backup=true), not in check mode
  type: str
sha256_before:
  description: sha256 of the file before the change.
  returned: always
  type: str
sha256_after:
  description: sha256 of the file after the change (what it would be, in check mode).
  returned: always
  type: str
previous:
  description: The value each key of O(values) had before (secrets masked).
  returned: always
  type: dict
lines:
  description: The change as a small diff of the changed keys' lines only, secrets masked; empty if unchanged.
  returned: always
  type: list
  elements: str
  sample:
    - "--- /opt/moncabinet/.env (before)"
    - "+++ /opt/moncabinet/.env (after)"
    - "-DB_NAME=qadhya"
    - "+DB_NAME=moncabinet"
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    JournalError,
    ModuleJournal,
    journal_argument_spec,
)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def backup_name(path):
    # The same shape as ansible.builtin.copy's backup=true, so operators find it where they expect.
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


def run(module):
    path = module.params["path"]
    values = {str(k): "" if v is None else str(v) for k, v in module.params["values"].items()}
    try:
        st = os.stat(path)
        if not os.path.isfile(path):
            module.fail_json(msg="env file %s is not a regular file; set dbops_env_file to the app's env file"
                             % path)
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        module.fail_json(msg="cannot read env file %s (%s); set dbops_env_file to the app's env file on "
                             "the Docker host and check its permissions" % (path, exc.strerror or exc))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        module.fail_json(msg="env file %s is not UTF-8 (byte %d); save it as UTF-8" % (path, exc.start))
    assume = module.params["assume"] if module.check_mode else {}
    try:
        if assume:
            text = envfile.set_values(text, {str(k): "" if v is None else str(v) for k, v in assume.items()})
            raw = text.encode("utf-8")
        new_text = envfile.set_values(text, values)
        items = envfile.changes(text, values)
    except envfile.EnvFileError as exc:
        module.fail_json(msg="env file %s: %s" % (path, exc))
    current = envfile.parse(text)
    new_raw = new_text.encode("utf-8")
    result = dict(
        changed=new_raw != raw,
        changes=[{k: item[k] for k in ("key", "before", "after", "appended")} for item in items],
        sha256_before=sha256(raw),
        sha256_after=sha256(new_raw),
        previous={key: envfile.mask_value(key, current.get(key)) for key in values},
        lines=envfile.diff_text(text, values, path).splitlines(),
    )
    if module._diff and result["changed"]:
        result["diff"] = dict(before_header="%s (before)" % path, after_header="%s (after)" % path,
                              before="".join(i["before_line"] + "\n" for i in items if i["before_line"]),
                              after="".join(i["after_line"] + "\n" for i in items))
    if not result["changed"] or module.check_mode:
        return result
    if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path) or ".", os.W_OK):
        module.fail_json(msg="env file %s (or its directory) is not writable by this user; run with become "
                             "or fix its permissions — nothing was changed" % path, **result)
    backup = backup_name(path) if module.params["backup"] else None
    if backup:
        shutil.copy2(path, backup)
        os.chmod(backup, st.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.chown(backup, st.st_uid, st.st_gid)
        result["backup_file"] = backup
    journal = ModuleJournal(module)
    try:
        journal("env_write", file=path, backup=backup, sha256_before=result["sha256_before"],
                sha256_after=result["sha256_after"], previous=result["previous"],
                set={k: envfile.mask_value(k, v) for k, v in values.items()})
    except JournalError as exc:
        module.fail_json(msg=str(exc), **result)
    write_like(path, new_raw, st)
    return result


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        values=dict(type="dict", required=True),
        backup=dict(type="bool", default=True),
        assume=dict(type="dict", default={}),
    )
    argument_spec.update(journal_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
