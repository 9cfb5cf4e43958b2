#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_migrate
short_description: Apply, baseline or report tracked SQL migrations
version_added: 0.1.0
author: qadhya platform team (@qadhya)
description:
  - Applies the C(*.sql) files of a directory on the Docker host to one
    database, in lexical order of file name, each in its own transaction
    together with its record in a tracking table (name, sha256 of the file,
    when, by whom, duration).
  - Runs hold a session-level advisory lock, so two runs on the same
    database and tracking table never apply the same migration twice; a
    crashed run's lock disappears with its connection.
  - Refuses the whole run, before applying anything, when a file that was
    already applied has changed since (its sha256 differs from the record).
  - Records migrations that were applied by hand (O(action=baseline), or
    O(adopt_existing) during apply) after checking that the objects they
    create really exist, without executing them again.
  - An existing tracking table of a simpler shape (for example an app's own
    C(_migrations) with only C(name) and C(applied_at)) is adopted, never
    recreated. Missing columns are added and its rows count as applied.
options:
  database:
    description: Database the migrations belong to.
    type: str
    required: true
  migrations_dir:
    description:
      - Directory on the Docker host (where the module runs) holding the
        migration files. Every regular C(*.sql) file not starting with a dot
        is a migration; they are applied in lexical order of their names.
      - Files must not contain transaction control (C(BEGIN), C(COMMIT),
        C(ROLLBACK)...) or psql meta-commands; such files are refused.
    type: path
    required: true
  action:
    description:
      - V(apply) applies pending migrations (all, or those selected by
        O(names) and O(target)).
      - V(baseline) records the migrations in O(names) (or all up to
        O(target)) as applied without running them, after checking that the
        tables, indexes, views, sequences, types, functions and triggers they
        create exist.
      - V(status) only reports; it never writes and never reports a change.
    type: str
    choices: [apply, baseline, status]
    default: apply
  names:
    description:
      - For O(action=baseline), the file names to record as applied.
      - For O(action=apply), an optional subset of file names to apply.
    type: list
    elements: str
    default: []
  target:
    description: Consider files up to and including this file name only.
    type: str
  adopt_existing:
    description:
      - During O(action=apply), a pending migration whose created objects
        all exist already is recorded (with C(adopted=true)) instead of run.
      - If only some of them exist the run fails, naming which exist and
        which do not.
      - Objects created with C(CREATE OR REPLACE) alone never make a file
        adoptable, since an older version of them may predate the file.
    type: bool
    default: false
  table:
    description: Name of the tracking table. Any name works; it is always quoted.
    type: str
    default: _migrations
  schema:
    description: Schema of the tracking table; created when missing.
    type: str
    default: public
  lock_timeout:
    description:
      - Seconds to wait for the advisory lock held by another run before
        failing. V(0) tries once.
    type: int
    default: 60
  applied_by:
    description:
      - Value recorded in the C(applied_by) column.
      - Defaults to C(<login_user>@<host name of the Docker host>).
    type: str
extends_documentation_fragment:
  - qadhya.dbops.connection
attributes:
  check_mode:
    support: full
    description: Reports what would be applied or adopted; writes nothing, not even the tracking table.
notes:
  - The CREATE parser reads top-level statements only; comments, strings and
    dollar-quoted function bodies are skipped, so a C(CREATE TABLE) inside a
    C(DO) block or a function is not seen. Unnamed indexes and temporary
    objects are not verified.
  - Functions and procedures are matched by name (any argument list).
  - No statement_timeout is set; a long migration runs until it finishes.
seealso:
  - module: community.postgresql.postgresql_script
"""

EXAMPLES = r"""
- name: migrate | Show what would be applied
  qadhya.dbops.db_migrate:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    migrations_dir: /opt/moncabinet/migrations
    action: status

- name: migrate | Apply pending migrations, adopting ones applied by hand
  qadhya.dbops.db_migrate:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    migrations_dir: /opt/moncabinet/migrations
    adopt_existing: true
  register: migrate_result

- name: migrate | Record the migration an operator ran with psql
  qadhya.dbops.db_migrate:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    migrations_dir: /opt/moncabinet/migrations
    action: baseline
    names:
      - 20260213_kb_validation_gamification.sql
"""

RETURN = r"""
database:
  description: Database worked on.
  returned: always
  type: str
  sample: moncabinet
applied:
  description: Migrations run by this call, in order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: File name.
      type: str
    sha256:
      description: sha256 of the file bytes, as recorded.
      type: str
    execution_ms:
      description: Time spent running the file, in milliseconds.
      type: int
  sample: [{"name": "20260213_kb_validation_gamification.sql", "sha256": "9f2c...", "execution_ms": 41}]
adopted:
  description: Migrations recorded as applied without being run (baseline or adopt_existing).
  returned: always
  type: list
  elements: str
  sample: ["20260213_kb_validation_gamification.sql"]
would_adopt:
  description: In check mode or with O(action=status), the migrations that would be adopted.
  returned: always
  type: list
  elements: str
  sample: []
pending:
  description:
    - In check mode and with O(action=status), the migrations the run would apply, in order.
    - After a real run, those left unapplied because a migration failed (empty on success).
  returned: always
  type: list
  elements: str
  sample: ["20260213_kb_validation_gamification.sql"]
already_applied:
  description: Files found recorded as applied before this run.
  returned: always
  type: list
  elements: str
  sample: ["20260101_init.sql"]
untracked_checksum:
  description: Applied files whose record has no sha256 (recorded by another tool); not verified.
  returned: always
  type: list
  elements: str
  sample: ["20260101_init.sql"]
missing_files:
  description: Names recorded as applied that have no file in O(migrations_dir) (a warning, not a failure).
  returned: always
  type: list
  elements: str
  sample: ["20251201_old.sql"]
tracking_table_created:
  description: Whether the tracking table was (or in check mode would be) created.
  returned: always
  type: bool
  sample: false
tracking_table_upgraded:
  description: Columns added (or in check mode to be added) to an existing tracking table.
  returned: always
  type: list
  elements: str
  sample: ["checksum", "applied_by", "execution_ms", "adopted"]
lock_wait_ms:
  description: Milliseconds spent waiting for the advisory lock.
  returned: always
  type: int
  sample: 3
checksum_mismatches:
  description: On failure, applied files that changed since, with both checksums.
  returned: failed
  type: list
  elements: dict
failed_migration:
  description: On failure, the migration that failed (rolled back entirely).
  returned: failed
  type: str
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connect,
    connection_argument_spec,
    require_psycopg2,
    validate_identifier,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._migrations import (
    MigrationError,
    MigrationRunner,
    load_migrations,
)


class DbMigrate:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        p = self.params
        result = dict(changed=False, database=p["database"])
        try:
            for key, what in (("database", "database"), ("table", "table"), ("schema", "schema")):
                validate_identifier(p[key], what)
        except ValueError as exc:
            self.module.fail_json(msg="%s; fix the option" % exc, **result)
        if p["lock_timeout"] < 0:
            self.module.fail_json(msg="lock_timeout must be 0 or more seconds", **result)
        applied_by = p["applied_by"] or "%s@%s" % (p["login_user"], socket.gethostname())

        try:
            files = load_migrations(p["migrations_dir"])
        except (MigrationError, OSError) as exc:
            self.module.fail_json(msg=getattr(exc, "msg", None) or str(exc), **result)

        conn = connect(self.module, dbname=p["database"])
        runner = MigrationRunner(conn, p["schema"], p["table"], applied_by, self.module.check_mode)
        try:
            out = runner.run(
                files,
                p["action"],
                p["names"],
                p["target"],
                p["adopt_existing"],
                p["lock_timeout"],
            )
        except MigrationError as exc:
            details = dict(runner.result)
            details.update(exc.details)
            if "failed" in details:
                details["failed_migration"] = details.pop("failed")
            details.pop("changed", None)
            details.update(result)
            details["changed"] = bool(runner.result["applied"] or runner.result["adopted"]
                                      or runner.result["tracking_table_created"]
                                      or runner.result["tracking_table_upgraded"])
            self.module.fail_json(msg=exc.msg, **details)
        finally:
            conn.close()
        result.update(out)
        for warning in runner.warnings:
            self.module.warn(warning)
        if out["missing_files"]:
            self.module.warn(
                "applied migrations without a file in %s: %s"
                % (p["migrations_dir"], ", ".join(out["missing_files"]))
            )
        self.module.exit_json(**result)


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        database=dict(type="str", required=True),
        migrations_dir=dict(type="path", required=True),
        action=dict(type="str", default="apply", choices=["apply", "baseline", "status"]),
        names=dict(type="list", elements="str", default=[]),
        target=dict(type="str"),
        adopt_existing=dict(type="bool", default=False),
        table=dict(type="str", default="_migrations"),
        schema=dict(type="str", default="public"),
        lock_timeout=dict(type="int", default=60),
        applied_by=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_psycopg2(module)
    DbMigrate(module).run()


if __name__ == "__main__":
    main()
