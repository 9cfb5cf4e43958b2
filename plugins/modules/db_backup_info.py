#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_backup_info
short_description: List the backups of a database and pick the newest one that vouches for it
version_added: 0.2.0
description:
  - Reads the manifests M(qadhya.dbops.db_backup) writes beside each backup in O(dest_dir)
    and lists the backups of O(database), newest first (by the UTC time stamp in the file name).
  - A backup belongs to O(database) when it was dumped from that database, or taken for it
    (manifest C(for_database)) - as a consolidation does when it backs up the source before
    renaming it to the target name.
  - Each backup is checked - the manifest is ours (C(tool), version, file name, format), the
    backup file is present with the manifest's size, the manifest says it was verified
    (C(verified.ok)), and with O(checksum=true) the file's SHA-256 equals the manifest's - and
    reported with the reasons it cannot be trusted (RV(backups[].problems)).
  - RV(newest) is the newest backup without problems, except that the dump of an emptied target
    taken just before its drop (C(purpose=dropped_empty_target)) is never the newest backup of
    the live database of that name.
  - Files named like backups without a manifest of ours are never read further and are listed
    in RV(ignored). Nothing is ever written or deleted.
author:
  - qadhya platform team (@qadhya)
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.INFO
options:
  dest_dir:
    description:
      - Backup directory on the Docker host (as given to M(qadhya.dbops.db_backup)).
      - A missing directory holds no backup.
      - Required unless O(path) is given.
    type: path
    aliases: [backup_dir]
  database:
    description:
      - The database whose backups are listed (its live name).
      - Required unless O(path) is given.
    type: str
  path:
    description:
      - Check this one backup (the file or its manifest) instead of listing O(dest_dir); it is
        then the only element of RV(backups), whatever database it belongs to unless
        O(database) is also given.
      - Mutually exclusive with O(dest_dir).
    type: path
  checksum:
    description:
      - Also recompute each backup's SHA-256 and compare it with its manifest. Reads every
        listed file in full (about 1 s per 500 MB here); without it, only the size is compared.
    type: bool
    default: false
notes:
  - To prove a chosen backup restorable, verify it with M(qadhya.dbops.db_backup)
    (C(action=verify), C(verify=structure) or C(restore)).
seealso:
  - module: qadhya.dbops.db_backup
"""

EXAMPLES = r"""
- name: Find the newest verified backup of qadhya
  qadhya.dbops.db_backup_info:
    dest_dir: /var/backups/qadhya
    database: qadhya
  register: backups

- name: Fail when it holds far fewer rows than the live database
  ansible.builtin.assert:
    that:
      - backups.newest | length > 0
      - backups.newest.total_rows >= live_rows | int * 0.5
    fail_msg: "newest backup of qadhya holds {{ backups.newest.total_rows | default(0) }} rows"

- name: Check the backup an operator chose before restoring it
  qadhya.dbops.db_backup_info:
    path: /var/backups/qadhya/moncabinet-20260211T101500Z.dump
  register: chosen
  failed_when: not chosen.backups[0].ok | default(false)

- name: List every backup with its SHA-256 checked
  qadhya.dbops.db_backup_info:
    dest_dir: /var/backups/qadhya
    database: qadhya
    checksum: true
"""

RETURN = r"""
backups:
  description: The backups of O(database), newest first, trusted or not.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: File name.
      type: str
      sample: moncabinet-20260211T101500Z.dump
    path:
      description: Backup file.
      type: str
      sample: /var/backups/qadhya/moncabinet-20260211T101500Z.dump
    manifest_path:
      description: Its manifest.
      type: str
    database:
      description: The database that was dumped.
      type: str
      sample: moncabinet
    for_database:
      description: The database name the backup serves (C(database) for manifests without it).
      type: str
      sample: qadhya
    purpose:
      description: Why it was taken (C(unknown) for manifests without it).
      type: str
      sample: pre_consolidation
    taken_at:
      description: When the dump finished (UTC, from the manifest).
      type: str
      sample: "2026-02-11T10:15:02.431000Z"
    stamp:
      description: UTC time stamp of the file name (the sort key).
      type: str
      sample: 20260211T101500Z
    age_h:
      description: Hours since the time stamp.
      type: float
      sample: 5.2
    bytes:
      description: Size recorded in the manifest.
      type: int
    size_on_disk:
      description: Size of the file now (null when it is missing).
      type: int
    mode:
      description: File mode, in octal (null when it is missing).
      type: str
      sample: "0600"
    sha256:
      description: SHA-256 recorded in the manifest.
      type: str
    sha256_checked:
      description: Whether the SHA-256 was recomputed (O(checksum)).
      type: bool
    format:
      description: custom, plain_gzip or plain_zstd.
      type: str
    verified:
      description: The manifest's verification record (level, ok, at).
      type: dict
    row_counts:
      description: Rows per table in the dumped snapshot.
      type: dict
      sample: {"knowledge_base": 580, "users": 2, "web_sources": 6}
    total_rows:
      description: Sum of RV(backups[].row_counts).
      type: int
      sample: 588
    ok:
      description: True when nothing below prevents trusting the backup.
      type: bool
    problems:
      description: Why the backup cannot be trusted (missing file, size, checksum, not verified).
      type: list
      elements: str
newest:
  description:
    - The newest backup of RV(backups) with no problem whose purpose is not
      C(dropped_empty_target); an empty dict when there is none.
  returned: always
  type: dict
  sample: {"path": "/var/backups/qadhya/moncabinet-20260211T101500Z.dump", "total_rows": 588,
           "purpose": "pre_consolidation", "for_database": "qadhya"}
ignored:
  description: File names that look like backups but have no manifest of ours (never touched).
  returned: always
  type: list
  elements: str
msg:
  description: One line saying what was found.
  returned: always
  type: str
  sample: "3 backup(s) of qadhya in /var/backups/qadhya; newest: moncabinet-20260211T101500Z.dump (588 rows)"
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import (
    MANIFEST_SUFFIX,
    list_backups,
    select_newest,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line


def summary(database, directory, entries, newest):
    text = "%d backup(s) of %s in %s" % (len(entries), database or "any database", directory)
    if newest:
        return "%s; newest: %s (%d rows)" % (text, newest["name"], newest["total_rows"])
    return text + "; none is verified and complete"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest_dir=dict(type="path", aliases=["backup_dir"]),
            database=dict(type="str"),
            path=dict(type="path"),
            checksum=dict(type="bool", default=False),
        ),
        required_one_of=[("dest_dir", "path")],
        mutually_exclusive=[("dest_dir", "path")],
        required_by={"dest_dir": "database"},
        supports_check_mode=True,
    )
    database = module.params["database"]
    only = None
    if module.params["path"]:
        path = os.path.abspath(module.params["path"])
        if path.endswith(MANIFEST_SUFFIX):
            path = path[: -len(MANIFEST_SUFFIX)]
        directory, only = os.path.split(path)
    else:
        directory = os.path.abspath(module.params["dest_dir"])
    try:
        entries, ignored = list_backups(directory, database, checksum=module.params["checksum"], only=only)
    except OSError as exc:
        module.fail_json(msg="cannot read the backup directory %s: %s; check dest_dir and the task's "
                         "privileges (become)" % (directory, first_line(exc)))
    newest = select_newest(entries, database)
    if only is not None and not entries:
        msg = ("%s is not one of our backups%s (a backup file named <prefix>-<UTC stamp>.<ext> with the "
               "manifest qadhya.dbops.db_backup wrote beside it)"
               % (os.path.join(directory, only), " of %s" % database if database else ""))
    else:
        msg = summary(database, directory, entries, newest)
    module.exit_json(changed=False, backups=entries, newest=newest, ignored=ignored, msg=msg)


if __name__ == "__main__":
    main()
