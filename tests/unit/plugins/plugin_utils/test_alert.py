# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for what an alert says: secrets masked, the webhook and Sentry shapes."""

from __future__ import annotations

import json

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _alert as alert

DSN = "https://0123456789abcdef@o1.ingest.sentry.example/42"
HOOK = "https://chat.example/hooks/T01/B02/abcdefSECRET"


def test_url_secrets_name_the_key_and_the_hook_path_not_a_project_id():
    assert "0123456789abcdef" in alert.url_secrets(DSN)
    assert "/42" not in alert.url_secrets(DSN)
    assert "/hooks/T01/B02/abcdefSECRET" in alert.url_secrets(HOOK)
    assert not alert.url_secrets("")


def test_build_masks_secret_keys_at_any_depth_and_known_strings():
    secrets = alert.url_secrets(DSN) + ["hunter2"]
    out = alert.build("db1", "backup", "pg_dump failed for user app password hunter2\nsecond line",
                      {"password": "hunter2", "steps": [{"api_token": "t0k"}, "dsn " + DSN],
                       "rows": 12, "empty_key": ""}, "error", secrets)
    text = json.dumps(out)
    assert "hunter2" not in text and "t0k" not in text and "0123456789abcdef" not in text
    assert out["reason"] == "pg_dump failed for user app password ********"
    assert out["details"]["rows"] == 12
    # An empty secret-looking value says "not set", which is worth seeing.
    assert out["details"]["empty_key"] == ""


def test_webhook_payload_has_text_and_the_structured_fields():
    out = alert.webhook_payload(alert.build("db1", "check", "backup: none", {}, "warning"))
    assert out["text"] == "[qadhya.dbops] WARNING check on db1: backup: none"
    assert (out["host"], out["check"], out["level"]) == ("db1", "check", "warning")
    assert out["reason"] == "backup: none"


def test_sentry_event_tags_and_groups_by_check_and_host():
    event = alert.sentry_event(alert.build("db1", "drill", "restore failed", {"n": 1}, "error"))
    assert event["tags"]["host"] == "db1" and event["tags"]["check"] == "drill"
    assert event["fingerprint"] == ["qadhya.dbops", "drill", "db1"]
    assert event["extra"]["details"] == {"n": 1}


def test_an_empty_reason_still_says_something():
    assert alert.build("db1", "check", "  \n", {}, "error")["reason"] == "no reason given"


def test_a_dead_receiver_is_a_reason_not_an_exception():
    # Port 1 on the loopback: nothing listens, the connection is refused at once.
    content = alert.build("db1", "check", "x", {}, "error")
    assert "refused" in alert.send_webhook("http://127.0.0.1:1/hooks/abcdefghij", content, timeout=3)
    assert "refused" in alert.send_sentry("http://0123456789abcdef@127.0.0.1:1/1", content, timeout=3)


def test_a_malformed_dsn_names_the_variable_without_the_dsn():
    why = alert.send_sentry("ftp://secretkey@x/1", alert.build("db1", "check", "x", {}, "error"))
    assert "dbops_alert_sentry_dsn" in why and "secretkey" not in why
