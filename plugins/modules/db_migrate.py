#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_migrate
short_description: Apply, rehearse, baseline or report tracked SQL migrations
version_added: 0.1.0
author: qadhya platform team (@qadhya)
description:
  - Applies the C(*.sql) files of a directory on the Docker host to one
    database, in lexical order of file name, each recorded in a tracking
    table (name, sha256 of the file, when, by whom, duration).
  - "All or none: the pending files run in one transaction together with
    their records (and the tracking table's creation or upgrade), so a file
    that fails leaves none of its batch applied nor recorded."
  - "A file that PostgreSQL refuses inside a transaction block (C(CREATE
    INDEX CONCURRENTLY), C(DROP INDEX CONCURRENTLY), C(REINDEX ...
    CONCURRENTLY), C(VACUUM), C(ALTER SYSTEM), C(CREATE DATABASE), C(CREATE
    TABLESPACE), C(CREATE SUBSCRIPTION), their C(DROP)s, C(ALTER TABLE ...
    DETACH PARTITION ... CONCURRENTLY)), or that carries a
    C(-- dbops: no-transaction) comment, cannot be part of a batch. It runs
    alone, in its own step, one statement after the other; the batch before
    it is committed first and the files after it form the next batch. If
    such a file fails halfway, the statements before the failing one stay
    applied; the message says which."
  - A file that adds a value to an enum (C(ALTER TYPE ... ADD VALUE)) is the
    last of its batch, since PostgreSQL lets later files use the new value
    only once it is committed.
  - O(action=check) rehearses the pending batch in a transaction that is
    always rolled back, under short timeouts, and fails with one line naming
    the file, the line and the server's error. It changes nothing.
  - Every session the module opens waits at most O(lock_wait_timeout) for a
    lock another session holds; it then stops with one line naming the
    blocking session (pid, application, user, state, since when).
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
extends_documentation_fragment:
  - qadhya.dbops.connection
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
  - qadhya.dbops.attributes.JOURNAL
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
      - A file to run must be readable, valid UTF-8 and hold at least one
        statement, with every string, quoted identifier and comment closed.
      - Files must not contain transaction control (C(BEGIN), C(COMMIT),
        C(ROLLBACK)...) or psql meta-commands; such files are refused.
    type: path
    required: true
  action:
    description:
      - V(apply) applies pending migrations (all, or those selected by
        O(names) and O(target)).
      - V(check) is the read-only pre-check of V(apply). It takes the run
        lock, checks every pending file as V(apply) would, then runs the
        pending transactional files and their records in one transaction
        that is always rolled back, each statement limited to
        O(rehearsal_timeout). Files that cannot run in a transaction are
        not rehearsed (RV(check_skipped) says so). Never reports a change.
      - V(baseline) records the migrations in O(names) (or all up to
        O(target)) as applied without running them, after checking that the
        tables, indexes, views, sequences, types, functions and triggers they
        create exist.
      - V(status) only reports; it never writes and never reports a change.
    type: str
    choices: [apply, baseline, check, status]
    default: apply
  names:
    description:
      - For O(action=baseline), the file names to record as applied.
      - For O(action=apply) and O(action=check), an optional subset of file names.
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
      - Seconds to wait for the advisory lock held by another run of this
        module before failing. V(0) tries once.
    type: int
    default: 60
  lock_wait_timeout:
    description:
      - Seconds any statement of the module (reading the tracking table, a
        migration, a rehearsal) waits for a table or row lock held by another
        session before it stops (PostgreSQL C(lock_timeout), set on every
        session the module opens).
      - The failure names the session that held the lock. Waiting longer
        than a few seconds behind the app also makes the app's own queries
        queue behind ours.
      - A migration may still set its own C(lock_timeout) for a statement that
        needs longer.
    type: float
    default: 5
  rehearsal_timeout:
    description:
      - With O(action=check), seconds each rehearsed statement may run
        (PostgreSQL C(statement_timeout)) before the check fails, so a
        rehearsal never holds locks the app needs for long.
    type: float
    default: 10
  applied_by:
    description:
      - Value recorded in the C(applied_by) column.
      - Defaults to C(<login_user>@<host name of the Docker host>).
    type: str
notes:
  - Check mode reports what would be applied or adopted and writes nothing,
    not even the tracking table. O(action=check) works the same in check mode.
  - The rehearsal rolls everything back, but what PostgreSQL never rolls
    back still happens during it - sequences advanced by C(nextval()), and
    any effect outside the database a migration's function may have.
  - A file that cannot run in a transaction is applied alone; keep such
    files to one statement (or statements that can be rerun, such as
    C(CREATE INDEX CONCURRENTLY IF NOT EXISTS)), since a failure halfway
    leaves the statements before it applied.
  - One journal entry (step C(migration)) is appended per committed step,
    with the database, the tracking table and the names applied and adopted;
    a no-transaction file that failed halfway adds an entry with C(partial).
  - The CREATE parser reads top-level statements only; comments, strings and
    dollar-quoted function bodies are skipped, so a C(CREATE TABLE) inside a
    C(DO) block or a function is not seen. Unnamed indexes and temporary
    objects are not verified.
  - Functions and procedures are matched by name (any argument list).
  - No statement_timeout is set when applying; a long migration runs until it finishes.
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

- name: migrate | Rehearse the pending migrations before anything changes
  qadhya.dbops.db_migrate:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    migrations_dir: /opt/moncabinet/migrations
    action: check

- name: migrate | Apply pending migrations, adopting ones applied by hand
  qadhya.dbops.db_migrate:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    migrations_dir: /opt/moncabinet/migrations
    adopt_existing: true
    journal: /var/backups/qadhya/journal/run.json
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
  description: On failure, the migration that failed.
  returned: failed
  type: str
batches:
  description:
    - The steps of the run, in order, each committed as a whole; C(transaction=false)
      for a file that cannot run in a transaction (applied alone).
    - In check mode and with O(action=status) or O(action=check), the steps apply would take.
  returned: always
  type: list
  elements: dict
  sample: [{"files": ["20260301_a.sql", "20260302_b.sql"], "transaction": true}]
checked:
  description: With O(action=check), the files rehearsed successfully (in one rolled-back transaction).
  returned: always
  type: list
  elements: str
  sample: ["20260213_kb_validation_gamification.sql"]
check_skipped:
  description: With O(action=check), the files not rehearsed because they cannot run in a transaction.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: File name.
      type: str
    line:
      description: Line of the statement (or marker) that keeps it out of a transaction.
      type: int
    reason:
      description: Why it was not rehearsed.
      type: str
  sample:
    - name: 20260302_idx.sql
      line: 1
      reason: cannot run in a transaction (CREATE INDEX CONCURRENTLY); not rehearsed
problems:
  description:
    - With O(action=status), one line per pending file that V(apply) would refuse
      (unreadable, not UTF-8, empty, unterminated, transaction control).
    - The other actions fail on the first one instead.
  returned: always
  type: list
  elements: str
  sample: []
partial:
  description:
    - On failure of a file that runs without a transaction, how far it got; its
      first C(statements_run) statements (up to line C(up_to_line)) stay applied.
  returned: failed
  type: dict
  sample: {"name": "20260302_idx.sql", "statements_run": 1, "statements": 2, "up_to_line": 1}
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connect,
    connection_argument_spec,
    require_psycopg2,
    validate_identifier,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    JournalError,
    ModuleJournal,
    journal_argument_spec,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._migration_runner import (
    MigrationRunner,
    Timeouts,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._migrations import (
    MigrationError,
    load_migrations,
)


class DbMigrate:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def validate(self, result):
        p = self.params
        try:
            for key, what in (("database", "database"), ("table", "table"), ("schema", "schema")):
                validate_identifier(p[key], what)
        except ValueError as exc:
            self.module.fail_json(msg="%s; fix the option" % exc, **result)
        if p["lock_timeout"] < 0:
            self.module.fail_json(msg="lock_timeout must be 0 or more seconds", **result)
        for key in ("lock_wait_timeout", "rehearsal_timeout"):
            if p[key] <= 0:
                self.module.fail_json(msg="%s must be more than 0 seconds (got %s)" % (key, p[key]),
                                      **result)

    def run(self):
        p = self.params
        result = dict(changed=False, database=p["database"])
        self.validate(result)
        applied_by = p["applied_by"] or "%s@%s" % (p["login_user"], socket.gethostname())

        try:
            files = load_migrations(p["migrations_dir"])
        except (MigrationError, OSError) as exc:
            self.module.fail_json(msg=getattr(exc, "msg", None) or str(exc), **result)

        conn = connect(self.module, dbname=p["database"])
        # Second session: only reads pg_stat_activity, to name a lock's holder.
        watch_conn = connect(self.module, dbname=p["database"])
        timeouts = Timeouts(run_lock=p["lock_timeout"], lock_wait=p["lock_wait_timeout"],
                            rehearsal=p["rehearsal_timeout"])
        runner = MigrationRunner(conn, p["schema"], p["table"], applied_by, self.module.check_mode,
                                 timeouts=timeouts, watch_conn=watch_conn,
                                 journal=ModuleJournal(self.module))
        try:
            out = runner.run(files, p["action"], p["names"], p["target"], p["adopt_existing"])
        except (MigrationError, JournalError) as exc:
            self.fail(exc, runner, result)
        finally:
            watch_conn.close()
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

    def fail(self, exc, runner, result):
        """Fail with the one line, and say what was done before it (applied, adopted)."""
        details = dict(runner.result)
        details.update(getattr(exc, "details", {}))
        if "failed" in details:
            details["failed_migration"] = details.pop("failed")
        if details.get("partial") is None:
            details.pop("partial", None)
        details.pop("changed", None)
        details.update(result)
        done = runner.result
        details["changed"] = bool(done["applied"] or done["adopted"] or details.get("partial")
                                  or done["tracking_table_created"] or done["tracking_table_upgraded"])
        self.module.fail_json(msg=getattr(exc, "msg", None) or str(exc), **details)


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(journal_argument_spec())
    argument_spec.update(
        database=dict(type="str", required=True),
        migrations_dir=dict(type="path", required=True),
        action=dict(type="str", default="apply", choices=["apply", "baseline", "check", "status"]),
        names=dict(type="list", elements="str", default=[]),
        target=dict(type="str"),
        adopt_existing=dict(type="bool", default=False),
        table=dict(type="str", default="_migrations"),
        schema=dict(type="str", default="public"),
        lock_timeout=dict(type="int", default=60),
        lock_wait_timeout=dict(type="float", default=5.0),
        rehearsal_timeout=dict(type="float", default=10.0),
        applied_by=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_psycopg2(module)
    DbMigrate(module).run()


if __name__ == "__main__":
    main()
