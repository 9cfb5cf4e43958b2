#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_offsite
short_description: Keep verified off-host copies of our backups in an S3-compatible bucket
version_added: 0.3.0
description:
  - V(upload) sends a backup written and verified by M(qadhya.dbops.db_backup) and its manifest
    to O(bucket) under O(prefix) (keys C(<prefix>/<backup file>) and
    C(<prefix>/<backup file>.manifest.json)), reads the object back and compares its SHA-256 and
    size with the manifest. The manifest object is written last, so a half-done upload is never
    taken for a backup. An object already there with the same SHA-256 is not sent again.
  - V(list) lists our copies, newest first; V(fetch) downloads one (by default the newest
    verified copy of O(database)) into O(dest_dir) and checks it against its manifest;
    V(prune) applies the retention policy of M(qadhya.dbops.db_backup) to the copies.
  - An object is ours only when its key is a backup name directly under O(prefix) and the
    manifest object beside it was written by M(qadhya.dbops.db_backup) for that very file.
    No other object is ever deleted or overwritten.
  - Talks to AWS S3, MinIO or any S3-compatible server through boto3 (on the Docker host).
    A missing bucket, an unreachable endpoint or refused credentials fail with one line;
    the local backup is never touched.
author:
  - qadhya platform team (@qadhya)
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
requirements:
  - boto3 (on the Docker host)
options:
  action:
    description: What to do.
    type: str
    choices: [upload, list, fetch, prune]
    default: list
  bucket:
    description: The bucket, which must exist.
    type: str
    required: true
  prefix:
    description: Key prefix (a folder) for the copies; empty means the top of the bucket.
    type: str
    default: ""
  endpoint_url:
    description:
      - URL of an S3-compatible server, for example C(https://minio.example.org:9000).
      - Empty means AWS S3 (its endpoint follows from O(region)).
    type: str
    default: ""
  region:
    description: Region of the bucket (MinIO accepts any, usually C(us-east-1)).
    type: str
    default: us-east-1
  access_key:
    description:
      - Access key ID; keep it in the vault. Empty lets boto3 find credentials itself
        (environment, instance profile).
    type: str
    default: ""
  secret_key:
    description: Secret access key; keep it in the vault.
    type: str
    default: ""
  validate_certs:
    description: Check the endpoint's TLS certificate.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a connection to the endpoint.
    type: int
    default: 10
  path:
    description: With O(action=upload), the local backup file (its manifest sits beside it).
    type: path
  database:
    description:
      - With O(action=list) and O(action=fetch), only copies dumped from this database or taken for it.
      - With O(action=prune), the database whose copies are pruned (gives the default O(name_prefix)).
    type: str
  name_prefix:
    description:
      - Backup file name prefix, as given to M(qadhya.dbops.db_backup); defaults to O(database).
      - Retention only considers copies with this prefix.
    type: str
  name:
    description:
      - With O(action=fetch), the backup file name (or full key) to fetch instead of the newest verified copy.
    type: str
  dest_dir:
    description:
      - With O(action=fetch), the local directory receiving the copy and its manifest
        (created C(0700), files C(0600)).
    type: path
  prune:
    description: After O(action=upload), apply the retention policy to the copies too.
    type: bool
    default: false
  retention_days:
    description: Copies older than this many days are deleted (within O(retention_keep)).
    type: int
    default: 30
  retention_keep:
    description:
      - The newest O(retention_keep) verified, undamaged copies are always kept; the newest
        verified copy is never deleted, even with V(0).
    type: int
    default: 7
notes:
  - Check mode reads the bucket and says what would be uploaded, fetched or deleted; it writes nothing.
  - O(access_key) and O(secret_key) are never returned or logged.
seealso:
  - module: qadhya.dbops.db_backup
"""

EXAMPLES = r"""
- name: Upload the new backup, verified by reading it back, and prune old copies
  qadhya.dbops.backup_offsite:
    action: upload
    path: "{{ backup_result.path }}"
    endpoint_url: https://minio.example.org:9000
    bucket: db-backups
    prefix: qadhya/prod
    access_key: "{{ vault_s3_access_key }}"
    secret_key: "{{ vault_s3_secret_key }}"
    prune: true
    database: qadhya
  no_log: true

- name: Fetch the newest verified copy of qadhya for a restore
  qadhya.dbops.backup_offsite:
    action: fetch
    bucket: db-backups
    prefix: qadhya/prod
    region: eu-west-3
    database: qadhya
    dest_dir: /var/backups/qadhya/fetched
  register: fetched
"""

RETURN = r"""
upload:
  description: The upload (name, key, url, sha256, bytes, uploaded, verified_remote, verified_at).
  returned: when O(action=upload)
  type: dict
  sample: {"name": "qadhya-20260211T101500Z.dump", "key": "qadhya/prod/qadhya-20260211T101500Z.dump",
           "url": "s3://db-backups/qadhya/prod/qadhya-20260211T101500Z.dump", "bytes": 17301504,
           "sha256": "9f86d081884c7d65...", "uploaded": true, "verified_remote": true}
copies:
  description:
    - Our copies, newest first (name, key, url, stamp, taken_at, database, for_database, purpose,
      bytes, sha256, format, verified, row_counts, age_s, ok, problems).
  returned: when O(action=list)
  type: list
  elements: dict
newest:
  description: The newest verified, undamaged copy ({} when none).
  returned: when O(action=list)
  type: dict
fetched:
  description: The copy fetched (as an element of RV(copies)) with C(path) and C(manifest_path).
  returned: when O(action=fetch)
  type: dict
path:
  description: The local file of the fetched copy (its planned path in check mode).
  returned: when O(action=fetch)
  type: str
deleted:
  description: Keys deleted by retention (would be deleted, in check mode).
  returned: when O(action=prune) or O(prune=true)
  type: list
  elements: str
kept:
  description: Keys of our copies kept by retention.
  returned: when O(action=prune) or O(prune=true)
  type: list
  elements: str
ignored:
  description: Keys that look like backups of this prefix without a manifest of ours; never touched.
  returned: when copies are listed or pruned
  type: list
  elements: str
duration_s:
  description: Seconds the action took.
  returned: always
  type: float
msg:
  description: One line saying what was done.
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils import _s3
from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import (
    BackupError,
    default_prefix,
    manifest_path,
    parse_name,
)


def argument_spec():
    return dict(
        action=dict(type="str", choices=["upload", "list", "fetch", "prune"], default="list"),
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str", default=""),
        region=dict(type="str", default="us-east-1"),
        access_key=dict(type="str", default="", no_log=True),
        secret_key=dict(type="str", default="", no_log=True),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=10),
        path=dict(type="path"),
        database=dict(type="str"),
        name_prefix=dict(type="str"),
        name=dict(type="str"),
        dest_dir=dict(type="path"),
        prune=dict(type="bool", default=False),
        retention_days=dict(type="int", default=30),
        retention_keep=dict(type="int", default=7),
    )


def name_prefix(params, fallback=None):
    if params.get("name_prefix"):
        return params["name_prefix"]
    if params.get("database"):
        return default_prefix(params["database"])
    return fallback


def run(module, bucket):
    p, check = module.params, module.check_mode
    action = p["action"]
    res = dict(changed=False)
    if action == "upload":
        up = _s3.upload(bucket, p["path"], check_mode=check)
        res.update(upload=up, changed=up["uploaded"])
        res["msg"] = "%s %s (%d bytes, sha256 %s)" % (
            ("would upload" if check else "uploaded") if up["uploaded"] else "already in the bucket:",
            up["url"], up["bytes"], up["sha256"][:16])
        if up["verified_remote"]:
            res["msg"] += ", read back and verified"
        if p["prune"]:
            parsed = parse_name(up["name"])
            deleted, kept, ignored = _s3.prune(bucket, None, name_prefix(p, parsed["prefix"]),
                                               p["retention_days"], p["retention_keep"],
                                               protect=(up["name"],), check_mode=check)
            res.update(deleted=deleted, kept=kept, ignored=ignored)
            res["changed"] = res["changed"] or bool(deleted)
            res["msg"] += "; pruned %d old cop%s" % (len(deleted), "y" if len(deleted) == 1 else "ies")
        return res
    bucket.open()
    if action == "prune":
        prefix = name_prefix(p)
        if not prefix:
            raise BackupError("action=prune needs database or name_prefix, so that only those copies are "
                              "considered; set one")
        deleted, kept, ignored = _s3.prune(bucket, p["database"], prefix, p["retention_days"],
                                           p["retention_keep"], check_mode=check)
        res.update(changed=bool(deleted), deleted=deleted, kept=kept, ignored=ignored,
                   msg="%s %d cop%s, kept %d" % ("would delete" if check else "deleted", len(deleted),
                                                 "y" if len(deleted) == 1 else "ies", len(kept)))
        return res
    entries, ignored = _s3.list_remote(bucket, database=p["database"], prefix=name_prefix(p))
    if action == "list":
        newest = next((e for e in entries if e["verified"] and e["ok"]), {})
        res.update(copies=[_s3.public(e) for e in entries], newest=_s3.public(newest) if newest else {},
                   ignored=[bucket.key(n) for n in ignored],
                   msg="%d cop%s in s3://%s/%s%s" % (len(entries), "y" if len(entries) == 1 else "ies",
                                                     bucket.bucket, bucket.prefix,
                                                     "; newest: " + newest["name"] if newest else ""))
        return res
    if not p["dest_dir"]:
        raise BackupError("action=fetch needs dest_dir (where the copy is written); set it")
    entry = _s3.choose(entries, p["database"], p["name"])
    path, changed = _s3.fetch(bucket, entry, p["dest_dir"], check_mode=check)
    fetched = dict(_s3.public(entry), path=path, manifest_path=manifest_path(path))
    res.update(changed=changed, path=path, fetched=fetched,
               msg="%s %s to %s (sha256 %s, taken %s)" % (
                   ("would fetch" if check else "fetched") if changed else "already fetched:",
                   entry["url"], path, entry["sha256"][:16], entry["taken_at"]))
    return res


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[("action", "upload", ("path",)), ("action", "fetch", ("dest_dir",))],
    )
    _s3.require_boto3(module)
    t0 = time.monotonic()
    p = module.params
    try:
        bucket = _s3.Bucket(p["bucket"], prefix=p["prefix"], endpoint_url=p["endpoint_url"],
                            region=p["region"], access_key=p["access_key"], secret_key=p["secret_key"],
                            validate_certs=p["validate_certs"], timeout=p["timeout"])
        res = run(module, bucket)
    except BackupError as exc:
        module.fail_json(msg=str(exc), duration_s=round(time.monotonic() - t0, 3))
    except OSError as exc:
        module.fail_json(msg="local file error: %s; check path, dest_dir and permissions" % exc,
                         duration_s=round(time.monotonic() - t0, 3))
    res["duration_s"] = round(time.monotonic() - t0, 3)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
