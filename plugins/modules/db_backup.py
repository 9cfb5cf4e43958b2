#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_backup
short_description: Create, verify, restore and prune verified PostgreSQL backups
version_added: 0.1.0
description:
  - V(create) runs C(pg_dump) inside the database container (so its version
    matches the server) and streams its output through this module into
    O(dest_dir) on the Docker host. The file is written under a hidden partial
    name created with mode C(0600), hashed (SHA-256) and counted while it streams,
    flushed to disk, checked (exit status, error messages, minimum size, file
    header, and for plain SQL the C(pg_dump) completion marker) and only then
    renamed to its final name. On any failure, a full disk included, the partial
    file is removed and earlier backups are left untouched.
  - The row count and the content checksum of every user table are taken in the
    very snapshot C(pg_dump) dumps (C(pg_export_snapshot()) and C(pg_dump --snapshot)),
    and written with the size, SHA-256, versions and timings to
    C(<backup>.manifest.json) next to the backup. The manifest never holds a password.
  - The new backup is then verified at level O(verify), optionally copied to
    O(copy_to), and old backups are pruned when O(prune=true).
  - A restore check killed halfway (the module's process gone - a crash, a reboot) leaves its scratch
    database behind. V(create), V(verify) with O(verify=restore) and V(clean) drop every such
    orphan first (RV(scratch_orphans_dropped)) - named by the scratch pattern only, no session
    on it, and its mark (C(COMMENT ON DATABASE), set as soon as it is created) naming a process
    of this host that is gone; a scratch database marked by another host is kept.
  - V(verify) checks an existing backup against its manifest, V(restore)
    restores one into a new or empty database and compares every table's row
    count and content checksum with the manifest (row counts only for a manifest
    without checksums, as written before 0.2.0), V(prune) applies the retention policy.
  - A file is considered one of this module's backups only when its manifest
    (written by this module, naming that very file, for the same database and
    name prefix) sits next to it. No other file is ever deleted.
author:
  - qadhya platform team (@qadhya)
extends_documentation_fragment:
  - qadhya.dbops.connection
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
  - qadhya.dbops.attributes.JOURNAL
options:
  action:
    description:
      - V(create) a new backup, V(verify) an existing one (O(path)), V(restore)
        one into O(restore_target), or V(prune) old backups in O(dest_dir).
      - V(clean) only drops the scratch databases restore checks killed halfway left (see above);
        the recovery after a crashed run calls it.
    type: str
    choices: [create, verify, restore, prune, clean]
    default: create
  database:
    description:
      - Database to back up. Required with O(action=create).
      - With O(action=prune), only backups of this database are considered.
    type: str
  for_database:
    description:
      - With O(action=create), the database name the dumped data serves, recorded in the
        manifest as C(for_database). A consolidation dumps its source before renaming it to
        the target name, so that backup is a backup of the target
        (M(qadhya.dbops.db_backup_info) lists it under either name).
      - Defaults to O(database).
    type: str
    version_added: 0.2.0
  purpose:
    description:
      - With O(action=create), why the backup is taken, recorded in the manifest.
      - V(dropped_empty_target) marks the dump of an empty database taken just before it is
        dropped; M(qadhya.dbops.db_backup_info) never reports such a backup as the newest
        backup of the live database of that name.
    type: str
    choices: [manual, scheduled, pre_consolidation, pre_migration, dropped_empty_target]
    default: manual
    version_added: 0.2.0
  dest_dir:
    description:
      - Backup directory on the Docker host. Created with mode C(0700) when
        missing; backups and manifests are written with mode C(0600).
      - Required with O(action=create) and O(action=prune).
    type: path
  format:
    description:
      - V(custom) is C(pg_dump -Fc) with its own compression (file C(.dump)).
      - V(plain_gzip) is plain SQL compressed with gzip (file C(.sql.gz)), as in
        the incident runbook; the compression runs in this module while the
        dump streams, which measured faster than C(gzip) in the container.
      - V(plain_zstd) is plain SQL compressed with C(zstd) (file C(.sql.zst));
        C(zstd) runs on the Docker host when it has one, so that the SQL crosses
        C(docker exec) once (on a 1.1 GB database this measured 16 s, against 25 s
        with C(zstd) in the container, whose SQL goes out and back in); else in the
        database container. The module fails when neither has it.
    type: str
    choices: [custom, plain_gzip, plain_zstd]
    default: custom
  compression_level:
    description:
      - Compression level. V(custom) and V(plain_gzip) accept 0 (none) to 9,
        V(plain_zstd) accepts 1 to 19.
    type: int
    default: 6
  verify:
    description:
      - How to verify the new backup (O(action=create)) or the one at O(path)
        (O(action=verify)), or which check to run before O(action=restore).
      - V(none) skips verification (the backup stays unverified for retention).
      - V(checksum) re-reads the file and compares its size and SHA-256 with the
        manifest.
      - V(structure) is V(checksum) plus C(pg_restore --list) with a C(TABLE DATA)
        entry for every table of the manifest (V(custom)), or a full
        decompression whose SQL must end with the C(pg_dump) completion marker
        (V(plain_gzip), V(plain_zstd)).
      - V(restore) is V(structure) plus a restore into a scratch database
        C(dbops_verify_<database>_<random>) created from C(template0), where the
        row count and content checksum of every table must equal the manifest's; the scratch
        database is dropped afterwards, also on failure. In check mode this last step is skipped.
    type: str
    choices: [none, checksum, structure, restore]
    default: structure
  path:
    description:
      - The backup file for O(action=verify) and O(action=restore). Its manifest
        C(<path>.manifest.json) is read; the manifest's own path is accepted too.
    type: path
  restore_target:
    description:
      - Database to restore into with O(action=restore). It must not exist (it is
        then created from C(template0)) or hold no table; data is never overwritten.
      - When it already holds exactly the row counts of the backup, nothing is
        done (C(changed=false)).
      - After the restore, every table's row count and content checksum must equal the
        manifest's, otherwise the database created by the module is dropped and the task
        fails naming the tables that differ.
    type: str
  prune:
    description: After a successful O(action=create), apply the retention policy too.
    type: bool
    default: false
  retention_days:
    description:
      - Backups older than this many days are deleted by O(action=prune) (and by
        O(prune=true)), within the limits of O(retention_keep).
      - Age is taken from the UTC time stamp in the file name.
    type: int
    default: 30
  retention_keep:
    description:
      - The newest O(retention_keep) verified backups are always kept, whatever
        their age. The newest verified backup is never deleted, even with V(0).
      - A backup with O(purpose=dropped_empty_target) never counts among them; it is
        deleted once older than O(retention_days).
    type: int
    default: 7
  free_space_margin_mb:
    description:
      - Before dumping, the module refuses to start unless the free space in
        O(dest_dir) is at least the database size (C(pg_database_size)) plus this margin.
    type: int
    default: 256
  name_prefix:
    description:
      - Backup file names are C(<name_prefix>-<UTC YYYYmmddTHHMMSSZ>.<dump|sql.gz|sql.zst>).
      - Defaults to the database name (with C(/) replaced by C(_)).
      - Retention only considers backups with this prefix.
    type: str
  lock_wait_timeout:
    description:
      - Seconds C(pg_dump) (C(--lock-wait-timeout)) and every session of the
        module (PostgreSQL C(lock_timeout)) wait for a lock held by another
        session before the backup stops.
      - A dump needs only C(ACCESS SHARE) locks, which only an C(ACCESS EXCLUSIVE)
        lock (C(LOCK TABLE), C(ALTER TABLE), C(VACUUM FULL), C(TRUNCATE)...) blocks;
        the failure names the sessions holding or queued for one (pid,
        application, user, state, since when) and the tables, and leaves no
        partial file.
    type: float
    default: 30
    version_added: 0.2.0
  content_checksums:
    description:
      - With O(action=create), also compute every table's content checksum (C(rows:sum) of
        C(hashtext()) of each row's text, as M(qadhya.dbops.db_info)'s C(checksum_tables)) in the
        dump's own snapshot, and record them in the manifest as C(checksums). A restore
        (O(verify=restore), O(action=restore), C(dr_drill.yml)) then proves every table's content,
        not only its row count.
      - The scan runs beside C(pg_dump), in the same exported snapshot. The session settings that
        change how a row prints (C(TimeZone), C(DateStyle), C(IntervalStyle), C(extra_float_digits),
        C(bytea_output), C(lc_monetary)) are pinned, and recorded as C(checksum_method), so a
        server with other defaults computes the same checksums. Checksums are only comparable
        between servers of the same major version.
      - V(false) records row counts only.
    type: bool
    default: true
    version_added: 0.2.0
  progress_file:
    description:
      - With O(action=create), a status file the module keeps while it works, so that a caller
        running it asynchronously can show a long backup alive and how far it is (the
        P(qadhya.dbops.backup#role) role does).
      - One JSON object (C(database), C(pid), C(step) V(dumping), V(verifying (<level>)) or
        V(copying to <dir>), C(bytes) written so far, C(elapsed_s), C(mb_s), C(started_at)),
        rewritten atomically with mode C(0600) about once a second while the dump streams and
        at each later step, and removed when the module ends, whether it succeeded or failed.
      - Never written in check mode. A status file that cannot be written never fails the backup.
    type: path
    version_added: 0.2.0
  copy_to:
    description:
      - A second directory (for example an off-host mount) that receives a copy
        of the backup and its manifest after verification, written the same way
        (partial file C(0600), checksum compared, rename). Created C(0700) when missing.
      - With O(prune=true), the same retention policy applies to it.
    type: path
notes:
  - Check mode computes the planned file name, the database size, the free space
    check and what pruning would delete, and writes nothing.
  - With O(journal), a verified new backup (V(create)) is appended to the run's journal as a
    C(backup) entry (its O(purpose) and RV(journal_entry)) once it is verified, so that the
    report and a person undoing the run by hand find it there.
  - V(create) always makes a new backup and reports C(changed=true); V(verify)
    never reports a change; V(prune) reports a change only when it deletes.
  - C(pg_dump), C(pg_restore) and C(psql) run as O(login_user) over the container's
    local socket; the password reaches them only through the environment
    (C(docker exec -e PGPASSWORD)), never on a command line.
seealso:
  - module: qadhya.dbops.db_info
  - module: qadhya.dbops.db_backup_info
"""

EXAMPLES = r"""
- name: Back up moncabinet before the consolidation, verified by a real restore
  qadhya.dbops.db_backup:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    dest_dir: /var/backups/qadhya
    verify: restore
  register: backup

- name: Back up the source of a consolidation as a backup of its target name
  qadhya.dbops.db_backup:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: moncabinet
    for_database: qadhya
    purpose: pre_consolidation
    dest_dir: /var/backups/qadhya

- name: Nightly gzip backup with 30-day retention and an off-host copy
  qadhya.dbops.db_backup:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    database: qadhya
    dest_dir: /var/backups/qadhya
    format: plain_gzip
    copy_to: /mnt/offsite/qadhya
    prune: true
    retention_days: 30
    retention_keep: 7

- name: Check an existing backup against its manifest
  qadhya.dbops.db_backup:
    action: verify
    path: "{{ backup.path }}"
    verify: checksum

- name: Restore a backup into a new database and compare row counts
  qadhya.dbops.db_backup:
    action: restore
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    path: /var/backups/qadhya/moncabinet-20260211T101500Z.dump
    restore_target: qadhya_restored

- name: Apply the retention policy only
  qadhya.dbops.db_backup:
    action: prune
    database: qadhya
    dest_dir: /var/backups/qadhya
    retention_days: 30
    retention_keep: 7
"""

RETURN = r"""
path:
  description: The backup file (planned path in check mode).
  returned: when a backup is created, verified or restored
  type: str
  sample: /var/backups/qadhya/moncabinet-20260211T101500Z.dump
manifest_path:
  description: Its manifest.
  returned: when a backup is created, verified or restored
  type: str
  sample: /var/backups/qadhya/moncabinet-20260211T101500Z.dump.manifest.json
bytes:
  description: Size of the backup file in bytes.
  returned: when a backup is created or verified
  type: int
  sample: 17301504
sha256:
  description: SHA-256 of the backup file, computed while it was written.
  returned: when a backup is created or verified
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
format:
  description: Format of the backup.
  returned: when a backup is created, verified or restored
  type: str
  sample: custom
database:
  description: Database backed up (create, verify) or restored into (restore).
  returned: when a backup is created, verified or restored
  type: str
  sample: moncabinet
for_database:
  description: The database name the backup serves (O(for_database), else the dumped database).
  returned: when a backup is created or verified
  type: str
  sample: qadhya
purpose:
  description: Why the backup was taken (O(purpose); C(unknown) for manifests written before 0.2.0).
  returned: when a backup is created or verified
  type: str
  sample: pre_consolidation
row_counts:
  description:
    - Exact row count of every user table in the dumped snapshot (from the manifest
      for verify and restore). Tables of schema C(public) are named bare, others C(schema.table).
    - Ordinary and partitioned tables are counted, each once (a partitioned table with the rows
      of all its partitions, which are not listed); tables owned by an extension are not.
  returned: when a backup is created, verified or restored
  type: dict
  sample: {"knowledge_base": 580, "users": 2, "web_sources": 6}
checksums:
  description:
    - Content checksum (C(rows:sum)) of every table in the dumped snapshot (from the manifest for
      verify and restore); empty with O(content_checksums=false) or a manifest without them.
  returned: when a backup is created, verified or restored
  type: dict
  sample: {"knowledge_base": "580:-81234567890", "users": "2:1234567"}
compared:
  description:
    - What the restore compared with the manifest, C(counts and checksums), or C(counts) for a
      manifest without checksums.
  returned: when O(action=restore)
  type: str
  sample: counts and checksums
checksums_after:
  description:
    - Content checksums read in O(restore_target) after the restore (empty when only counts were compared).
  returned: when O(action=restore)
  type: dict
  sample: {"knowledge_base": "580:-81234567890", "users": "2:1234567"}
row_counts_after:
  description: Row counts read in O(restore_target) after the restore.
  returned: when O(action=restore)
  type: dict
  sample: {"knowledge_base": 580, "users": 2, "web_sources": 6}
duration_s:
  description: Seconds spent dumping (create), verifying (verify) or restoring (restore).
  returned: when a backup is created, verified or restored
  type: float
  sample: 2.13
throughput_mb_s:
  description: Backup file MiB written per second of dump.
  returned: when a backup is created
  type: float
  sample: 8.1
estimated_bytes:
  description: Database size (C(pg_database_size)) used for the free space check.
  returned: when O(action=create)
  type: int
  sample: 61865984
free_space:
  description: The free space check (ok, directory, free_mb, need_mb, database_size_mb, margin_mb).
  returned: when O(action=create)
  type: dict
  sample: {"ok": true, "directory": "/var/backups/qadhya", "free_mb": 80214.5, "need_mb": 315.0,
           "database_size_mb": 59.0, "margin_mb": 256}
verified:
  description:
    - The verification. C(level) requested, C(ok), C(duration_s), and C(details)
      (checksum, TOC entries or SQL size, scratch database and tables compared,
      C(checked) = highest level actually completed, C(error) when it failed).
  returned: when a backup is created, verified or restored
  type: dict
  sample: {"level": "restore", "ok": true, "duration_s": 3.2,
           "details": {"checked": "restore", "scratch_database": "dbops_verify_moncabinet_1a2b3c4d",
                       "scratch_dropped": true, "tables_compared": 5}}
copies:
  description: Files written in O(copy_to).
  returned: when O(copy_to) is set and a backup is created
  type: list
  elements: str
deleted:
  description: Backups deleted by the retention policy (would be deleted, in check mode).
  returned: always
  type: list
  elements: str
kept:
  description: Backups of this database and prefix kept by the retention policy.
  returned: always
  type: list
  elements: str
scratch_orphans_dropped:
  description:
    - Scratch databases of restore checks killed halfway, dropped (would be dropped, in check mode)
      before the action's own work.
  returned: with O(action=create), O(action=clean), and O(action=verify) with O(verify=restore)
  type: list
  elements: str
  sample: ["dbops_verify_moncabinet_1a2b3c4d"]
ignored:
  description:
    - Files that look like backups of this prefix but have no valid manifest of
      this module (or belong to another database); never touched.
  returned: when retention ran
  type: list
  elements: str
journal_entry:
  description: The C(backup) entry appended to O(journal) (V(create) with O(journal) set, not in check mode).
  returned: when a backup is created with O(journal)
  type: dict
  sample: {"step": "backup", "purpose": "pre_consolidation", "backup": {"path": "/var/backups/qadhya/x.dump"}}
cmd:
  description: The C(pg_dump) (create) or restore command line, without any secret.
  returned: when a backup is created or restored
  type: list
  elements: str
  sample: ["docker", "exec", "-e", "PGPASSWORD", "qadhya-postgres", "pg_dump", "--username=moncabinet",
           "--no-password", "--dbname=dbname='moncabinet'", "--snapshot=00000003-0000001B-1",
           "--format=custom", "--compress=6"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._backup import BackupError, BackupRunner
from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import PURPOSES
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connection_argument_spec,
    require_psycopg2,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    ModuleJournal,
    journal_argument_spec,
)

# What a backup's journal entry keeps of its result: enough for the report and for an undo by hand.
JOURNALED = ("path", "manifest_path", "bytes", "sha256", "format", "verified", "duration_s",
             "throughput_mb_s", "deleted")


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        action=dict(type="str", choices=["create", "verify", "restore", "prune", "clean"], default="create"),
        database=dict(type="str"),
        for_database=dict(type="str"),
        purpose=dict(type="str", default="manual", choices=list(PURPOSES)),
        dest_dir=dict(type="path"),
        format=dict(type="str", choices=["custom", "plain_gzip", "plain_zstd"], default="custom"),
        compression_level=dict(type="int", default=6),
        verify=dict(type="str", choices=["none", "checksum", "structure", "restore"], default="structure"),
        path=dict(type="path"),
        restore_target=dict(type="str"),
        prune=dict(type="bool", default=False),
        retention_days=dict(type="int", default=30),
        retention_keep=dict(type="int", default=7),
        free_space_margin_mb=dict(type="int", default=256),
        name_prefix=dict(type="str"),
        copy_to=dict(type="path"),
        content_checksums=dict(type="bool", default=True),
        progress_file=dict(type="path"),
        lock_wait_timeout=dict(type="float", default=30.0),
    )
    spec.update(journal_argument_spec())
    return spec


class DbBackup:
    """Runs the requested action and turns errors into one-line failures."""

    def __init__(self, module):
        self.module = module
        self.runner = BackupRunner(module)

    def run(self):
        try:
            result = self.runner.run()
        except BackupError as exc:
            result = self.runner.failure_result()
            result.pop("msg", None)
            for key in ("rc", "stderr", "cmd"):
                if key in exc.details:
                    result[key] = exc.details[key]
            self.module.fail_json(msg=str(exc), **result)
        if self.module.params["action"] == "create" and result.get("changed"):
            entry = ModuleJournal(self.module)(
                "backup", purpose=self.module.params["purpose"],
                backup={key: result[key] for key in JOURNALED if key in result})
            if entry:
                result["journal_entry"] = entry
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[
            ("action", "create", ("database", "dest_dir")),
            ("action", "prune", ("dest_dir",)),
            ("action", "prune", ("database", "name_prefix"), True),
            ("action", "verify", ("path",)),
            ("action", "restore", ("path", "restore_target")),
        ],
    )
    if module.params["action"] in ("create", "restore") or module.params["verify"] == "restore":
        require_psycopg2(module)
    DbBackup(module).run()


if __name__ == "__main__":
    main()
