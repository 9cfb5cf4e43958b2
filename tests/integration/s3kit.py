"""A real S3-compatible server for the tests: moto's server on 127.0.0.1.

The server is started with request signing enforced after three
unauthenticated calls, which create an IAM user, its policy and its access
key; from then on every request must be signed with that key, so a wrong
secret is refused (403) as AWS or MinIO would refuse it.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labkit import free_port, wait_for

BUCKET = "dbops-it"
POLICY = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
          '"Resource": "*"}]}')


class S3Server:
    """A running moto server with one bucket and one access key."""

    def __init__(self, port, proc):
        self.port = port
        self.proc = proc
        self.endpoint = "http://127.0.0.1:%d" % port
        self.bucket = BUCKET
        self.access_key = self.secret_key = None

    def client(self, secret_key=None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key or "bootstrap",
                            aws_secret_access_key=secret_key or self.secret_key or "bootstrap")

    def setup_credentials(self):
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="dbops")
        iam.put_user_policy(UserName="dbops", PolicyName="backups", PolicyDocument=POLICY)
        key = iam.create_access_key(UserName="dbops")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.client().create_bucket(Bucket=self.bucket)

    def vars(self, prefix, **extra):
        """The dbops_offsite_* inventory variables for this server."""
        return {"dbops_offsite_bucket": self.bucket, "dbops_offsite_prefix": prefix,
                "dbops_offsite_endpoint_url": self.endpoint, "dbops_offsite_access_key": self.access_key,
                "dbops_offsite_secret_key": self.secret_key, **extra}

    def module_args(self, prefix, **extra):
        """backup_offsite module arguments for this server."""
        return {"bucket": self.bucket, "prefix": prefix, "endpoint_url": self.endpoint,
                "access_key": self.access_key, "secret_key": self.secret_key, **extra}

    def objects(self, prefix):
        """{key: (size, sha256 read back, metadata)} under `prefix/`."""
        client = self.client()
        found = {}
        for obj in client.list_objects_v2(Bucket=self.bucket, Prefix=prefix + "/").get("Contents", []):
            got = client.get_object(Bucket=self.bucket, Key=obj["Key"])
            data = got["Body"].read()
            found[obj["Key"]] = (len(data), hashlib.sha256(data).hexdigest(), got.get("Metadata") or {})
        return found

    def put(self, key, data, **meta):
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=meta)


def start_s3(tmp_dir):
    """Start moto_server on a free port; an S3Server with credentials and the bucket."""
    port = free_port()
    log = open(Path(tmp_dir) / "moto.log", "wb")  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    server = S3Server(port, proc)

    def answers():
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=1)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return proc.poll() is not None

    if not wait_for(answers, timeout=60, interval=0.2) or proc.poll() is not None:
        stop_s3(server)
        pytest.fail("moto_server did not start; see %s/moto.log" % tmp_dir)
    server.setup_credentials()
    return server


def stop_s3(server):
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.proc.log.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server for the test module, stopped after it."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop_s3(server)

