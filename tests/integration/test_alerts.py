"""qadhya.dbops.alert against a real receiver on 127.0.0.1, then check.yml red on a lab instance.

The receiver (alertkit) stands for both Sentry - the DSN points at it and
sentry-sdk posts its envelope to /api/1/envelope/ - and a chat webhook. The
tests assert what arrived (host, check, reason) and that no secret did, and
that a receiver that is down is reported without failing the task.
"""

import json
from pathlib import Path

import labkit
import pytest
from alertkit import Receiver
from s3kit import s3  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INSTANCE = labkit.instance_name("italerts")  # module_lab
KEY = "5ecret0key0123456789abcdef012345"
TOKEN = "hooks/T0/B0/hooksecretXYZ"
PASSWORD = "alert-test-password-42"


def dead_port():
    # Bound then closed: nothing listens there, a connection is refused at once.
    return labkit.free_port()


def test_alert_reaches_sentry_and_the_webhook_without_secrets():
    with Receiver() as rx:
        result, output = labkit.run_module("alert", {
            "sentry_dsn": rx.dsn(KEY), "webhook_url": rx.webhook_url(TOKEN), "host": "db-1",
            "check": "backup", "reason": "pg_dump failed (password %s rejected)" % PASSWORD,
            "details": {"db_password": PASSWORD, "backup_dir": "/srv/backups"}, "redact": [PASSWORD]},
            verbose=True)
        assert not result["failed"], output
        assert result["delivered"] == ["sentry", "webhook"] and result["undelivered"] == []
        assert result["changed"] is False
        (event,) = rx.events()
        (hook,) = rx.webhooks()
        arrived = json.dumps([r["raw"] for r in rx.requests])
    assert event["tags"] == {"host": "db-1", "check": "backup", "source": "qadhya.dbops"}
    assert event["level"] == "error" and event["message"].startswith("ERROR backup on db-1: pg_dump failed")
    assert (hook["host"], hook["check"]) == ("db-1", "backup")
    assert hook["reason"] == "pg_dump failed (password ******** rejected)"
    assert hook["text"].startswith("[qadhya.dbops] ERROR backup on db-1")
    assert hook["details"] == {"db_password": "********", "backup_dir": "/srv/backups"}
    for secret in (PASSWORD, KEY, TOKEN):
        assert secret not in arrived and secret not in output


def test_a_dead_receiver_is_reported_and_the_task_succeeds():
    with Receiver() as rx:
        result, output = labkit.run_module("alert", {
            "sentry_dsn": rx.dsn(KEY), "webhook_url": "http://127.0.0.1:%d/%s" % (dead_port(), TOKEN),
            "check": "drill", "reason": "restore failed", "level": "warning", "timeout": 5})
        assert len(rx.events()) == 1
    assert not result["failed"], output
    assert result["delivered"] == ["sentry"] and result["undelivered"] == ["webhook"]
    assert "refused" in result["reasons"]["webhook"]
    assert "alert not delivered to webhook" in output
    assert TOKEN not in output


def test_check_mode_sends_nothing():
    with Receiver() as rx:
        result, output = labkit.run_module("alert", {"webhook_url": rx.webhook_url(TOKEN), "check": "check",
                                                     "reason": "x"}, check=True)
        assert rx.requests == []
    assert not result["failed"], output
    assert result["would_deliver"] == ["webhook"] and result["delivered"] == []


def test_a_red_check_alerts_and_a_dead_receiver_only_warns(module_lab, s3, tmp_path):  # noqa: F811
    """check.yml on the incident state is red: Sentry gets the alert, the webhook is down; the
    off-host check lists a real (empty) bucket and is red too."""
    lab = module_lab
    password = lab.info["db_password"]
    hook = "http://127.0.0.1:%d/%s" % (dead_port(), TOKEN)
    with Receiver() as rx:
        host = labkit.host_vars(lab.info, tmp_path, dbops_db_password=password,
                                dbops_alert_sentry_dsn=rx.dsn(KEY), dbops_alert_webhook_url=hook,
                                **s3.vars("alerts"))
        inventory = labkit.write_inventory(tmp_path / "inventory.json", {"lab-alert": host})
        proc = labkit.run_playbook(REPO / "playbooks" / "check.yml", inventory, "-v")
        events = rx.events()
        arrived = json.dumps([r["raw"] for r in rx.requests])
    out = proc.stdout + proc.stderr
    # Red for the check's own reasons, and only for them: the alert task itself did not fail.
    assert proc.returncode != 0
    assert "TASK [Report | Alert on a critical check]" in out
    assert "Report | Fail the hosts in a critical state" in out and "critical: configuration, backup" in out
    assert "alert not delivered to webhook" in out
    (event,) = events
    assert event["tags"]["host"] == "lab-alert" and event["tags"]["check"] == "check"
    assert "backup: no verified backup of qadhya" in event["extra"]["reason"]
    assert "offsite: no verified copy in s3://%s" % s3.bucket in event["extra"]["reason"]
    report = json.loads((tmp_path / "reports" / "check" / "lab-alert-latest.json").read_text())
    assert report["alert"]["delivered"] == ["sentry"] and report["alert"]["undelivered"] == ["webhook"]
    assert "refused" in report["alert"]["reasons"]["webhook"]
    checks = {c["check"]: c["status"] for c in report["checks"]}
    assert checks["offsite"] == "critical" and report["offsite_copy"] == {}
    for secret in (password, KEY, TOKEN, s3.secret_key):
        assert secret not in arrived and secret not in out and secret not in json.dumps(report)
