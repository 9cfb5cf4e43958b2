# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the off-host copies: which objects are ours, what retention keeps, the error lines.

The bucket here is a dictionary behind the Bucket interface; the real S3
round trips are in tests/integration/test_offsite.py (moto server).
"""

from __future__ import annotations

import datetime
import json

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from ansible_collections.qadhya.dbops.plugins.module_utils import _s3
from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import BackupError

UTC = datetime.timezone.utc  # noqa: UP017


class DictBucket(_s3.Bucket):
    """Bucket over a dict {name: bytes} (names directly under the prefix)."""

    def __init__(self, objects):  # pylint: disable=super-init-not-called
        self.bucket, self.prefix, self.endpoint = "b", "p", "http://s3.test"
        self.objects = objects
        self.deleted = []

    def names(self):
        return {name: len(data) for name, data in self.objects.items()}

    def head(self, name):
        return {"ContentLength": len(self.objects[name])} if name in self.objects else None

    def chunks(self, name):
        yield self.objects[name]

    def delete(self, name):
        self.deleted.append(name)
        self.objects.pop(name, None)


def stamp(days_ago):
    return (datetime.datetime.now(UTC) - datetime.timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ")


def ours(objects, days_ago, verified=True, prefix="qadhya", database="qadhya", data=b"PGDMP data"):
    name = "%s-%s.dump" % (prefix, stamp(days_ago))
    objects[name] = data
    objects[name + ".manifest.json"] = json.dumps(dict(
        tool="qadhya.dbops", manifest_version=1, database=database, format="custom", file=name,
        bytes=len(data), sha256="0" * 64, verified=dict(level="structure", ok=verified))).encode()
    return name


def test_prune_keeps_newest_verified_and_never_touches_foreign_objects():
    objects = {}
    old = ours(objects, 45)
    older_unverified = ours(objects, 50, verified=False)
    newest_verified = ours(objects, 40)
    kept_recent = ours(objects, 1, verified=False)
    foreign = "qadhya-%s.dump" % stamp(60)
    objects[foreign] = b"no manifest"
    other_tool = "qadhya-%s.dump" % stamp(70)
    objects[other_tool] = b"x"
    objects[other_tool + ".manifest.json"] = b'{"tool": "someone else"}'
    bucket = DictBucket(objects)
    deleted, kept, ignored = _s3.prune(bucket, "qadhya", None, retention_days=30, retention_keep=0)
    # The newest verified copy is kept even at 40 days; the unverified recent one is within 30 days.
    assert sorted(deleted) == sorted("p/" + n for n in (old, older_unverified))
    assert sorted(kept) == sorted("p/" + n for n in (newest_verified, kept_recent))
    assert sorted(ignored) == sorted("p/" + n for n in (foreign, other_tool))
    assert foreign in objects and other_tool in objects and other_tool + ".manifest.json" in objects


def test_a_damaged_copy_is_listed_with_its_problem_and_never_counts_as_newest_kept():
    objects = {}
    name = ours(objects, 0)
    objects[name] = b"truncated"
    entries, _ignored = _s3.list_remote(DictBucket(objects), database="qadhya")
    assert not entries[0]["ok"] and "object has 9 bytes, manifest says 10" in entries[0]["problems"][0]
    with pytest.raises(BackupError, match="cannot be trusted"):
        _s3.fetch(DictBucket(objects), _s3.choose(entries, "qadhya"), "/nonexistent")


def test_choose_needs_a_verified_copy_of_the_database():
    objects = {}
    ours(objects, 1, verified=False)
    ours(objects, 2, database="other", prefix="other")
    entries, _ignored = _s3.list_remote(DictBucket(objects))
    with pytest.raises(BackupError, match="no verified copy of qadhya in the bucket"):
        _s3.choose(entries, "qadhya")
    assert _s3.choose(entries, "other")["database"] == "other"


@pytest.mark.parametrize("prefix, expected", [(" /a/b/ ", "a/b"), ("", ""), ("x", "x")])
def test_prefix_normalized(prefix, expected):
    assert _s3.normalize_prefix(prefix) == expected


def test_prefix_refuses_dot_parts():
    with pytest.raises(BackupError, match="'.' or '..'"):
        _s3.normalize_prefix("a/../b")


@pytest.mark.parametrize("code, doing, expected", [
    ("NoSuchBucket", "listing", "does not exist; create it or fix the bucket name"),
    ("404", "opening the bucket", "does not exist"),
    ("403", "opening the bucket", "refused the credentials while opening the bucket (403)"),
    ("SignatureDoesNotMatch", "uploading", "refused the credentials"),
    ("SlowDown", "uploading", "answered SlowDown while uploading"),
])
def test_client_errors_are_one_line(code, doing, expected):
    bucket = DictBucket({})
    exc = ClientError({"Error": {"Code": code, "Message": "m\nsecond line"}}, "Op")
    line = bucket.explain(exc, doing)
    assert expected in line and "\n" not in line and line.startswith("bucket 'b' at http://s3.test")


def test_unreachable_endpoint_names_it():
    exc = EndpointConnectionError(endpoint_url="http://s3.test")
    line = DictBucket({}).explain(exc, "opening the bucket")
    assert line == ("cannot reach http://s3.test while opening the bucket; check dbops_offsite_endpoint_url "
                    "and the network")
