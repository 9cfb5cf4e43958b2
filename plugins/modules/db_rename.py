#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_rename
short_description: Rename a PostgreSQL database safely, ending its sessions first
version_added: 0.1.0
description:
  - Renames database O(name) to O(target) from the maintenance database, as one
    short task meant to run while the application is stopped.
  - Blocks new connections to the source (C(ALLOW_CONNECTIONS false)), signals
    every remaining session at once and polls C(pg_stat_activity) until they are
    gone, then renames and allows connections again.
  - If O(target) already exists it must be empty (no table with rows, counted
    exactly); it is dropped first only with O(drop_empty_target=true). A target
    that holds data is always refused and nothing is changed.
  - Idempotent; when O(name) is absent and O(target) exists the rename is
    already done and nothing changes.
  - Any failure after connections were blocked allows them again before the
    module fails, and the message lists what was done.
author:
  - qadhya platform team (@qadhya)
extends_documentation_fragment:
  - qadhya.dbops.connection
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
  - qadhya.dbops.attributes.JOURNAL
options:
  name:
    description:
      - Current name of the database (the source). Any characters are allowed.
      - Must differ from O(maintenance_db), since PostgreSQL cannot rename the database
        a session is connected to.
    type: str
    required: true
  target:
    description: New name of the database.
    type: str
    required: true
  drop_empty_target:
    description:
      - When O(target) exists and holds no rows in any table, drop it before the rename.
      - When false, an existing O(target) makes the module fail without changing anything.
    type: bool
    default: false
  terminate_timeout:
    description:
      - Seconds to wait for the sessions of the databases involved to end after
        they were signalled. On timeout the module fails, names the remaining
        sessions and allows connections again.
    type: float
    default: 10
  count_rows:
    description:
      - Count every table of O(name) exactly, just before connections are
        blocked, and return the counts as RV(row_counts).
      - Meant for the moment the app is already stopped, so the counts are
        the last word before the rename and can be compared with the counts
        after it.
      - The same single scan of each table gives its content checksum (RV(checksums)).
    type: bool
    default: false
  lock_wait_timeout:
    description:
      - Seconds the counts (O(count_rows) and the proof that O(target) is empty)
        wait for a lock held by another session (PostgreSQL C(lock_timeout))
        before the module stops, changing nothing.
      - The failure names the sessions holding or queued for an C(ACCESS EXCLUSIVE)
        lock (pid, application, user, state, since when) and the tables.
    type: float
    default: 5
    version_added: 0.2.0
  target_backup:
    description:
      - The verified backup of the empty O(target), recorded in the journal entry of its drop so
        that a rollback can restore it.
    type: path
notes:
  - The module's failure result still says what was done (RV(renamed), RV(dropped_target),
    RV(blocked)), and with O(journal) each change was recorded just before it was made.
  - Supports check mode; it reports RV(would_rename), RV(would_drop) and
    RV(would_terminate) without writing anything.
  - The role needs to own the databases (or be superuser), plus superuser or
    C(pg_signal_backend) to end other sessions.
seealso:
  - module: qadhya.dbops.db_info
  - name: ALTER DATABASE
    description: PostgreSQL documentation of ALTER DATABASE.
    link: https://www.postgresql.org/docs/current/sql-alterdatabase.html
"""

EXAMPLES = r"""
- name: Consolidate onto qadhya (the empty qadhya is dropped first)
  qadhya.dbops.db_rename:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    name: moncabinet
    target: qadhya
    drop_empty_target: true
  register: rename

- name: Plan only
  qadhya.dbops.db_rename:
    login_host: 10.0.0.5
    login_password: "{{ vault_db_password }}"
    name: moncabinet
    target: qadhya
  check_mode: true
"""

RETURN = r"""
row_counts:
  description: With O(count_rows), exact rows per table of O(name) just before the rename.
  returned: when count_rows is true and the rename ran
  type: dict
  sample: {"knowledge_base": 580, "users": 2}
checksums:
  description:
    - With O(count_rows), the content checksum of every table of O(name) (C(rows:sum) of a hash of each
      row's text, as M(qadhya.dbops.db_info)'s C(checksum_tables)), from the same scan as RV(row_counts).
  returned: when count_rows is true and the rename ran
  type: dict
  sample: {"knowledge_base": "580:-1234567890"}
  version_added: 0.2.0
oid:
  description:
    - The OID of the database found under O(target) after the rename; the module fails when it is not the
      OID O(name) had (another database took the name), the rename being catalog-only.
  returned: when the rename ran
  type: int
  sample: 16390
  version_added: 0.2.0
renamed:
  description: Whether the rename happened in this run.
  returned: always
  type: bool
  sample: true
dropped_target:
  description: Whether the empty target was dropped in this run.
  returned: always
  type: bool
  sample: true
blocked:
  description: Databases left with connections blocked after a failure (empty when all were allowed again).
  returned: on failure after connections were blocked
  type: list
  elements: str
terminated:
  description: Number of sessions that were signalled to end.
  returned: always
  type: int
  sample: 3
would_rename:
  description: Whether the rename is (or, in check mode, would be) needed.
  returned: always
  type: bool
would_drop:
  description: Whether dropping the empty target is (or would be) needed.
  returned: always
  type: bool
would_terminate:
  description: In check mode, the number of sessions that would be ended; else 0.
  returned: always
  type: int
actions:
  description: What was done (or would be done), in order, for a person.
  returned: always
  type: list
  elements: str
  sample:
    - "blocked new connections to 'moncabinet', 'qadhya'"
    - "ended 1 session(s)"
    - "dropped the empty database 'qadhya'"
    - "renamed 'moncabinet' to 'qadhya'"
    - "allowed connections to 'qadhya'"
blocked_ms:
  description: How long connections were blocked (from blocking to allowing again).
  returned: always
  type: int
  sample: 85
elapsed_ms:
  description: Wall time of the whole module, checks included.
  returned: always
  type: int
  sample: 140
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connection_argument_spec,
    require_psycopg2,
    resolve_host,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line
from ansible_collections.qadhya.dbops.plugins.module_utils._inventory import (
    Connector,
    InventoryError,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    ModuleJournal,
    journal_argument_spec,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._rename import (
    DB_ERRORS,
    RenameError,
    Renamer,
    TableCounter,
)


class DbRename:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.connector = None

    def run(self):
        started = time.monotonic()
        params = self.params
        if params["terminate_timeout"] < 0:
            self.module.fail_json(msg="terminate_timeout must be 0 or more seconds")
        require_psycopg2(self.module)
        if params["lock_wait_timeout"] <= 0:
            self.module.fail_json(msg="lock_wait_timeout must be more than 0 seconds")
        self.connector = Connector(params, resolve_host(self.module))
        timeout = params["lock_wait_timeout"]
        counter = TableCounter(Connector(params, self.connector.host, lock_timeout=timeout), timeout)
        conn = self.connector.open(params["maintenance_db"], autocommit=True)
        try:
            with conn.cursor() as cur:
                renamer = Renamer(
                    cur,
                    counter.tables,
                    check_mode=self.module.check_mode,
                    terminate_timeout=params["terminate_timeout"],
                    count_source=params["count_rows"],
                    journal=ModuleJournal(self.module),
                    target_backup=params.get("target_backup"),
                    last_word=counter.last_word,
                )
                result = renamer.run(
                    params["name"], params["target"], params["maintenance_db"],
                    drop_empty_target=params["drop_empty_target"],
                )
        finally:
            conn.close()
        result["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        return result


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        target=dict(type="str", required=True),
        drop_empty_target=dict(type="bool", default=False),
        terminate_timeout=dict(type="float", default=10.0),
        count_rows=dict(type="bool", default=False),
        target_backup=dict(type="path"),
        lock_wait_timeout=dict(type="float", default=5.0),
    )
    argument_spec.update(journal_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = DbRename(module).run()
    except RenameError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    except InventoryError as exc:
        module.fail_json(msg=str(exc))
    except DB_ERRORS as exc:
        module.fail_json(msg="renaming %r to %r failed before any change: %s"
                         % (module.params["name"], module.params["target"], first_line(exc)))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
