# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Off-host copies of our backups in an S3-compatible bucket (private; boto3).

Layout: `<prefix>/<backup file>` and `<prefix>/<backup file>.manifest.json`,
the manifest byte for byte as db_backup wrote it. An object is ours only
when its key has the backup name pattern, sits directly under the prefix,
and its manifest object beside it is one of ours naming that very file;
retention never deletes any other object. The file's SHA-256 travels as
object metadata and is checked by reading the object back, so the check
holds on every S3 implementation (AWS, MinIO, moto, Ceph), whatever their
server-side checksum support.

Errors are one line naming the bucket or endpoint and the fix; the access
key and the secret never appear in one.
"""

from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import (
    MANIFEST_SUFFIX,
    NEVER_NEWEST,
    BackupError,
    commit_partial,
    default_prefix,
    ensure_dir,
    is_verified,
    iso,
    load_manifest,
    manifest_path,
    manifest_problem,
    parse_name,
    remove_quietly,
    select_prune,
    served_database,
    sha256_file,
    stream_to_partial,
    utc_now,
    write_atomic,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
except ImportError:  # reported by require_boto3
    boto3 = None
    BotoCoreError = ClientError = EndpointConnectionError = NoCredentialsError = ()

CHUNK = 1 << 20
# Manifests are small JSON documents; anything bigger is not ours.
MANIFEST_MAX = 1 << 22
META_SHA = "sha256"
NOT_FOUND = ("NoSuchKey", "404", "NotFound")
NO_BUCKET = ("NoSuchBucket",)
REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
           "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed")


def require_boto3(module):
    if boto3 is None:
        module.fail_json(msg="the Python package boto3 is missing on the Docker host; install it "
                         "(pip install boto3, or the distribution's python3-boto3)")


def normalize_prefix(prefix):
    """`a/b` for ` /a/b/ `; '' means the bucket's top level."""
    prefix = (prefix or "").strip().strip("/")
    if "\x00" in prefix or any(part in (".", "..") for part in prefix.split("/") if prefix):
        raise BackupError("offsite prefix %r holds '.' or '..' parts or NUL; choose another prefix" % prefix)
    return prefix


class Bucket:
    """One bucket + prefix, reached through boto3."""

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None, secret_key=None,
                 validate_certs=True, timeout=10):
        if not bucket:
            raise BackupError("no bucket given; set the offsite bucket (dbops_offsite_bucket)")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint = endpoint_url or "the AWS S3 endpoint"
        # Path-style requests work on every S3-compatible server (MinIO needs
        # them unless it is set up for virtual hosts); AWS picks by itself.
        style = "path" if endpoint_url else "auto"
        config = Config(connect_timeout=timeout, read_timeout=max(timeout, 60),
                        retries={"max_attempts": 2, "mode": "standard"}, s3={"addressing_style": style},
                        user_agent_extra="qadhya.dbops")
        session = boto3.session.Session(aws_access_key_id=access_key or None,
                                        aws_secret_access_key=secret_key or None,
                                        region_name=region or None)
        self.client = session.client("s3", endpoint_url=endpoint_url or None, verify=validate_certs,
                                     config=config)

    # -- names ------------------------------------------------------------
    def key(self, name):
        return "%s/%s" % (self.prefix, name) if self.prefix else name

    def url(self, name):
        return "s3://%s/%s" % (self.bucket, self.key(name))

    # -- errors -----------------------------------------------------------
    def explain(self, exc, doing):
        """One line for a boto3/botocore failure while `doing` something."""
        where = "bucket %r at %s" % (self.bucket, self.endpoint)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error") or {}
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in NO_BUCKET or (code in NOT_FOUND and doing == "opening the bucket"):
                return ("%s does not exist; create it or fix the bucket name (dbops_offsite_bucket)" % where)
            if code in REFUSED:
                return ("%s refused the credentials while %s (%s); check dbops_offsite_access_key and "
                        "dbops_offsite_secret_key in the vault and the bucket's policy"
                        % (where, doing, code))
            return "%s answered %s while %s: %s" % (
                where, code, doing, first_line(error.get("Message") or code))
        if isinstance(exc, NoCredentialsError):
            return ("no credentials for %s; set dbops_offsite_access_key and dbops_offsite_secret_key "
                    "(from the vault)" % where)
        if isinstance(exc, EndpointConnectionError):
            return ("cannot reach %s while %s; check dbops_offsite_endpoint_url and the network"
                    % (self.endpoint, doing))
        return "%s failed while %s: %s; check dbops_offsite_endpoint_url and the network" % (
            where, doing, first_line(exc))

    def call(self, doing, method, **kwargs):
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(self.explain(exc, doing)) from None

    def open(self):
        """Fail with one line unless the bucket exists and takes our credentials."""
        self.call("opening the bucket", "head_bucket")

    def head(self, name):
        """head_object of `name`, or None when missing."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            code = str((exc.response.get("Error") or {}).get("Code"))
            if code in NOT_FOUND:
                return None
            raise BackupError(self.explain(exc, "reading %s" % self.url(name))) from None
        except BotoCoreError as exc:
            raise BackupError(self.explain(exc, "reading %s" % self.url(name))) from None

    def chunks(self, name):
        """The object's bytes, streamed."""
        body = self.call("reading %s" % self.url(name), "get_object", Key=self.key(name))["Body"]
        try:
            while True:
                chunk = body.read(CHUNK)
                if not chunk:
                    return
                yield chunk
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(self.explain(exc, "reading %s" % self.url(name))) from None
        finally:
            body.close()

    def sha256(self, name):
        """(sha256 hex, bytes) of the object, read back in full."""
        hasher = hashlib.sha256()
        total = 0
        for chunk in self.chunks(name):
            hasher.update(chunk)
            total += len(chunk)
        return hasher.hexdigest(), total

    def read_manifest(self, name):
        """The parsed manifest object of backup `name`, or None when missing, too big or not JSON."""
        head = self.head(name + MANIFEST_SUFFIX)
        if head is None or head.get("ContentLength", 0) > MANIFEST_MAX:
            return None
        try:
            return json.loads(b"".join(self.chunks(name + MANIFEST_SUFFIX)).decode("utf-8"))
        except ValueError:
            return None

    def put_file(self, path, name, sha):
        try:
            self.client.upload_file(path, self.bucket, self.key(name),
                                    ExtraArgs={"Metadata": {META_SHA: sha},
                                               "ContentType": "application/octet-stream"})
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(self.explain(exc, "uploading %s" % self.url(name))) from None
        except Exception as exc:  # s3transfer wraps client errors in its own
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                raise BackupError(self.explain(cause, "uploading %s" % self.url(name))) from None
            raise BackupError("uploading %s failed: %s" % (self.url(name), first_line(exc))) from None

    def put_bytes(self, name, data, sha=None):
        extra = {"Metadata": {META_SHA: sha}} if sha else {}
        self.call("uploading %s" % self.url(name), "put_object", Key=self.key(name), Body=data,
                  ContentType="application/json", **extra)

    def delete(self, name):
        self.call("deleting %s" % self.url(name), "delete_object", Key=self.key(name))

    def names(self):
        """Object names directly under the prefix, with their sizes."""
        start = self.prefix + "/" if self.prefix else ""
        found = {}
        token = None
        while True:
            kwargs = {"Prefix": start}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("listing s3://%s/%s" % (self.bucket, start), "list_objects_v2", **kwargs)
            for obj in page.get("Contents") or ():
                rest = obj["Key"][len(start):]
                if rest and "/" not in rest:
                    found[rest] = obj.get("Size")
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")


# --------------------------------------------------------------------------
# the actions


def remote_entry(bucket, name, size, manifest, now):
    """What a listing says of one remote backup of ours."""
    parsed = parse_name(name)
    problems = []
    if size != manifest.get("bytes"):
        problems.append("object has %s bytes, manifest says %s" % (size, manifest.get("bytes")))
    if not is_verified(manifest):
        problems.append("not verified")
    return dict(
        name=name, key=bucket.key(name), url=bucket.url(name), when=parsed["when"],
        stamp=parsed["when"].strftime("%Y%m%dT%H%M%SZ"),
        taken_at=manifest.get("finished_at") or "", database=manifest.get("database"),
        for_database=served_database(manifest), purpose=manifest.get("purpose") or "unknown",
        bytes=size, sha256=manifest.get("sha256"), format=manifest.get("format"),
        verified=is_verified(manifest), row_counts=manifest.get("row_counts") or {},
        age_s=round((now - parsed["when"]).total_seconds(), 1), ok=not problems, problems=problems,
    )


def list_remote(bucket, database=None, prefix=None, now=None):
    """(ours newest first, ignored names) in the bucket under its prefix.

    `prefix` is the backups' name prefix: only those are listed; `database`
    keeps the backups dumped from it or taken for it.
    """
    now = now or utc_now()
    found = bucket.names()
    ours, ignored = [], []
    for name in sorted(found):
        if name.endswith(MANIFEST_SUFFIX):
            continue
        parsed = parse_name(name)
        if parsed is None or (prefix is not None and parsed["prefix"] != prefix):
            continue
        manifest = bucket.read_manifest(name) if name + MANIFEST_SUFFIX in found else None
        if manifest_problem(manifest, name) is not None:
            ignored.append(name)
            continue
        if database is not None and database not in (manifest.get("database"), served_database(manifest)):
            continue
        ours.append(remote_entry(bucket, name, found[name], manifest, now))
    ours.sort(key=lambda e: (e["when"], e["name"]), reverse=True)
    return ours, ignored


def public(entry):
    """An entry as a module returns it (no datetime)."""
    return {k: v for k, v in entry.items() if k != "when"}


def upload(bucket, path, check_mode=False):
    """Upload a verified local backup and its manifest; read the copy back and compare.

    Returns {name, key, url, sha256, bytes, uploaded, verified_remote}.
    """
    path = os.path.abspath(path)
    name = os.path.basename(path)
    manifest = load_manifest(path)
    problem = manifest_problem(manifest, name)
    if problem:
        raise BackupError("%s cannot be uploaded: its manifest %s; only backups written by db_backup "
                          "with their manifest go off-host" % (path, problem or "is missing"))
    if not is_verified(manifest):
        raise BackupError("%s is not verified (manifest verified.ok is not true); verify it first "
                          "(db_backup action=verify)" % path)
    sha, size = sha256_file(path)
    if sha != manifest["sha256"] or size != manifest["bytes"]:
        raise BackupError("%s differs from its manifest (sha256 or size); the local file is damaged, it "
                          "is not uploaded" % path)
    bucket.open()
    result = dict(name=name, key=bucket.key(name), url=bucket.url(name), sha256=sha, bytes=size,
                  uploaded=False, verified_remote=False)
    head = bucket.head(name)
    if head is not None and (head.get("Metadata") or {}).get(META_SHA) != sha:
        raise BackupError("%s already exists and is not this backup (other sha256); it was left "
                          "untouched, check the bucket" % bucket.url(name))
    have_manifest = bucket.head(name + MANIFEST_SUFFIX) is not None
    if check_mode:
        result["uploaded"] = head is None or not have_manifest
        return result
    if head is None:
        bucket.put_file(path, name, sha)
        result["uploaded"] = True
    got, got_size = bucket.sha256(name)
    if got != sha or got_size != size:
        if result["uploaded"]:
            bucket.delete(name)
        raise BackupError("the copy %s reads back as %d bytes sha256 %s, the manifest says %d bytes sha256 "
                          "%s; %s, the local backup is kept" % (
                              bucket.url(name), got_size, got[:16], size, sha[:16],
                              "the copy was deleted" if result["uploaded"] else "delete that object"))
    result["verified_remote"] = True
    result["verified_at"] = iso(utc_now())
    # The manifest goes last: until it is there, the object is not a backup
    # of ours, so a half-done upload is never listed, fetched or pruned.
    if not have_manifest:
        with open(manifest_path(path), "rb") as handle:
            bucket.put_bytes(name + MANIFEST_SUFFIX, handle.read())
        result["uploaded"] = True
    return result


def prune(bucket, database, prefix, retention_days, retention_keep, protect=(), check_mode=False):
    """(deleted keys, kept keys, ignored names) after applying retention to our remote copies."""
    prefix = prefix or default_prefix(database)
    ours, ignored = list_remote(bucket, database=None, prefix=prefix)
    # Damaged copies do not count among the newest verified ones.
    for entry in ours:
        entry["verified"] = entry["verified"] and entry["ok"]
    delete, keep = select_prune(ours, utc_now(), retention_days, retention_keep, protect=protect)
    for entry in delete:
        if not check_mode:
            bucket.delete(entry["name"])
            bucket.delete(entry["name"] + MANIFEST_SUFFIX)
    return [e["key"] for e in delete], [e["key"] for e in keep], [bucket.key(n) for n in ignored]


def choose(entries, database, name=None):
    """The entry to fetch: `name`, or the newest verified one that serves `database`."""
    if name:
        for entry in entries:
            if name in (entry["name"], entry["key"]):
                return entry
        raise BackupError("%s is not one of our copies in the bucket (no manifest of ours beside it); "
                          "list them with action=list" % name)
    for entry in entries:
        serves = database is None or database in (entry["database"], entry["for_database"])
        if entry["verified"] and entry["purpose"] not in NEVER_NEWEST and serves:
            return entry
    raise BackupError("no verified copy%s in the bucket; run backup.yml with the offsite settings first"
                      % (" of %s" % database if database else ""))


def fetch(bucket, entry, dest_dir, check_mode=False):
    """Download `entry` into dest_dir (0600), checked against its manifest. (path, changed)."""
    dest = os.path.abspath(dest_dir)
    path = os.path.join(dest, entry["name"])
    if not entry["ok"]:
        raise BackupError("the copy %s cannot be trusted: %s; use another copy"
                          % (entry["url"], "; ".join(entry["problems"])))
    if os.path.isfile(path) and not os.path.islink(path) and sha256_file(path)[0] == entry["sha256"]:
        return path, False
    if os.path.lexists(path):
        raise BackupError("%s already exists and differs from %s; move it away first" % (path, entry["url"]))
    if check_mode:
        return path, True
    ensure_dir(dest)
    manifest = bucket.read_manifest(entry["name"])
    partial, size, sha = stream_to_partial(dest, entry["name"], bucket.chunks(entry["name"]))
    if sha != manifest["sha256"] or size != manifest["bytes"]:
        remove_quietly(partial)
        raise BackupError("the copy %s is damaged: %d bytes sha256 %s, its manifest says %d bytes sha256 %s; "
                          "use another copy" % (entry["url"], size, sha[:16], manifest["bytes"],
                                                str(manifest["sha256"])[:16]))
    commit_partial(partial, path)
    write_atomic(dest, entry["name"] + MANIFEST_SUFFIX,
                 (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return path, True
