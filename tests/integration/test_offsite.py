"""Off-host copies in a real S3-compatible server (moto on 127.0.0.1).

The module tests use backups made by the labkit helper (retention reads
only manifests); the playbook tests run backup.yml against a lab instance
of this module's own and read the bucket back with boto3.
"""

import datetime
import hashlib
import json
import re
from pathlib import Path

import pytest
from alertkit import Receiver
from labkit import (
    REPO,
    fake_backup,
    host_vars,
    instance_name,
    run_module,
    run_playbook,
    write_inventory,
)
from s3kit import s3  # noqa: F401 (the fixture)

INSTANCE = instance_name("offsite")
PLAYBOOKS = REPO / "playbooks"
UTC = datetime.timezone.utc  # noqa: UP017


def stamp(days_ago):
    return (datetime.datetime.now(UTC) - datetime.timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_upload_verifies_and_retention_keeps_newest_and_foreign(s3, tmp_path):  # noqa: F811
    prefix = "mod/retention"
    old1 = fake_backup(tmp_path, "qadhya", "qadhya", stamp(45))
    old2 = fake_backup(tmp_path, "qadhya", "qadhya", stamp(35))
    recent = fake_backup(tmp_path, "qadhya", "qadhya", stamp(3))
    for name in (old1, old2, recent):
        res, _ = run_module("backup_offsite",
                            s3.module_args(prefix, action="upload", path=str(tmp_path / name)))
        assert not res["failed"] and res["upload"]["verified_remote"], res.get("msg")
    # Not ours: a backup-like name without a manifest, one whose manifest another tool wrote,
    # another name prefix, and a file in a sub-folder.
    foreign = {
        "%s/qadhya-%s.dump" % (prefix, stamp(60)): b"PGDMP not ours",
        "%s/qadhya-%s.dump" % (prefix, stamp(50)): b"PGDMP other tool",
        "%s/qadhya-%s.dump.manifest.json" % (prefix, stamp(50)): json.dumps({"tool": "other"}).encode(),
        "%s/other-%s.dump" % (prefix, stamp(70)): b"PGDMP other prefix",
        "%s/old/qadhya-%s.dump" % (prefix, stamp(80)): b"PGDMP sub-folder",
    }
    for key, data in foreign.items():
        s3.put(key, data)

    newest = fake_backup(tmp_path, "qadhya", "qadhya", stamp(0))
    res, _ = run_module("backup_offsite", s3.module_args(prefix, action="upload", path=str(tmp_path / newest),
                                                         prune=True, retention_days=30, retention_keep=2))
    assert not res["failed"] and res["changed"], res.get("msg")
    assert sorted(res["deleted"]) == sorted("%s/%s" % (prefix, n) for n in (old1, old2))
    objects = s3.objects(prefix)
    for name in (recent, newest):
        size, digest, meta = objects["%s/%s" % (prefix, name)]
        assert digest == sha(tmp_path / name) == meta["sha256"]
        assert "%s/%s.manifest.json" % (prefix, name) in objects
    for name in (old1, old2):
        assert "%s/%s" % (prefix, name) not in objects
        assert "%s/%s.manifest.json" % (prefix, name) not in objects
    assert set(foreign) <= set(objects)

    # Uploading again sends nothing, still checks the copy; list and fetch find it.
    again, _ = run_module("backup_offsite",
                          s3.module_args(prefix, action="upload", path=str(tmp_path / newest)))
    assert not again["failed"] and not again["changed"] and again["upload"]["verified_remote"]
    listed, _ = run_module("backup_offsite", s3.module_args(prefix, action="list", database="qadhya"))
    assert [c["name"] for c in listed["copies"]] == [newest, recent]
    assert listed["newest"]["sha256"] == sha(tmp_path / newest)
    fetched, _ = run_module("backup_offsite", s3.module_args(prefix, action="fetch", database="qadhya",
                                                             dest_dir=str(tmp_path / "fetched")))
    assert not fetched["failed"] and sha(fetched["path"]) == sha(tmp_path / newest)
    assert (Path(fetched["path"]).stat().st_mode & 0o777) == 0o600

    unverified = fake_backup(tmp_path, "qadhya", "qadhya", stamp(0.5), verified=False)
    refused, _ = run_module("backup_offsite", s3.module_args(prefix, action="upload",
                                                             path=str(tmp_path / unverified)))
    assert refused["failed"] and "is not verified" in refused["msg"]
    assert "%s/%s" % (prefix, unverified) not in s3.objects(prefix)


@pytest.mark.parametrize("change, expected", [
    ({"secret_key": "not-the-secret"}, "refused the credentials"),
    ({"bucket": "no-such-bucket"}, "'no-such-bucket' at http://127.0.0.1:%d does not exist"),
    ({"endpoint_url": "http://127.0.0.1:9", "timeout": 2}, "cannot reach http://127.0.0.1:9"),
])
def test_unusable_bucket_gives_one_line_and_keeps_the_local_backup(s3, tmp_path, change, expected):  # noqa: F811
    name = fake_backup(tmp_path, "qadhya", "qadhya", stamp(0))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    res, output = run_module("backup_offsite", {**s3.module_args("mod/errors", action="upload",
                                                                 path=str(tmp_path / name)), **change},
                             verbose=True)
    assert res["failed"]
    assert "\n" not in res["msg"] and (expected % s3.port if "%d" in expected else expected) in res["msg"]
    assert s3.secret_key not in output and "not-the-secret" not in output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab


def test_backup_playbook_uploads_verified_copy_and_keeps_local_on_failure(lab, s3, tmp_path):  # noqa: F811
    prefix = "lab/" + lab.name
    hv = host_vars(lab.info, tmp_path, dbops_backup_database="moncabinet", **s3.vars(prefix))
    inventory = write_inventory(tmp_path / "inventory.json", {lab.name: hv})

    planned = run_playbook(PLAYBOOKS / "backup.yml", inventory, "--check")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert s3.objects(prefix) == {}

    proc = run_playbook(PLAYBOOKS / "backup.yml", inventory, "-vvv")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert s3.secret_key not in proc.stdout + proc.stderr
    assert s3.access_key not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "reports" / "backup" / (lab.name + "-latest.json")).read_text())
    local = Path(report["backup"]["path"])
    objects = s3.objects(prefix)
    assert objects["%s/%s" % (prefix, local.name)][1] == sha(local) == report["backup"]["sha256"]
    remote_manifest = s3.client().get_object(Bucket=s3.bucket,
                                             Key="%s/%s.manifest.json" % (prefix, local.name))
    assert remote_manifest["Body"].read() == Path(str(local) + ".manifest.json").read_bytes()
    assert report["offsite"]["ok"] and report["offsite"]["upload"]["verified_remote"]
    assert s3.secret_key not in json.dumps(report)

    hv["dbops_offsite_secret_key"] = "not-the-secret"
    with Receiver() as rx:
        hv["dbops_alert_webhook_url"] = rx.webhook_url()
        inventory = write_inventory(tmp_path / "inventory.json", {lab.name: hv})
        failed = run_playbook(PLAYBOOKS / "backup.yml", inventory, "-vvv")
    assert failed.returncode != 0
    [alert] = rx.webhooks()
    assert alert["host"] == lab.name and alert["check"] == "backup"
    assert alert["reason"].startswith("backup failed: off-host copy failed:") and "refused" in alert["reason"]
    assert "not-the-secret" not in json.dumps(alert) and s3.access_key not in json.dumps(alert)
    # The callback may wrap a long message: read it with the line breaks folded.
    text = " ".join(failed.stdout.split())
    assert re.search(r"backup failed: off-host copy failed: bucket '%s' at \S+ refused the credentials "
                     r".*?; the local backup \S+ is kept" % s3.bucket, text), text[-3000:]
    assert "not-the-secret" not in failed.stdout + failed.stderr
    report = json.loads((tmp_path / "reports" / "backup" / (lab.name + "-latest.json")).read_text())
    assert report["result"] == "failed" and not report["offsite"]["ok"]
    kept = Path(report["backup"]["path"])
    manifest = json.loads(Path(str(kept) + ".manifest.json").read_text())
    assert kept.is_file() and manifest["verified"]["ok"] is True and sha(kept) == manifest["sha256"]
    assert "%s/%s" % (prefix, kept.name) not in s3.objects(prefix)
