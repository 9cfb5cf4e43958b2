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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._env_file import EnvFileError, EnvWrite
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    JournalError,
    ModuleJournal,
    journal_argument_spec,
)


def run(module):
    params = module.params
    writer = EnvWrite(params["path"], params["values"], backup=params["backup"],
                      assume=params["assume"] if module.check_mode else None, diff=module._diff)
    try:
        result = writer.plan()
        if module.check_mode:
            return result
        return writer.apply(ModuleJournal(module))
    except (EnvFileError, JournalError) as exc:
        module.fail_json(msg=str(exc), **writer.result)


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
