# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an alert says and how it reaches its receivers (private, controller side).

Used by the qadhya.dbops.alert action. Sending never raises for a receiver
that is down or refuses: each sender returns None when the receiver took the
alert, else one line saying why not, so that the caller can report it and
carry on (an alert must never turn a failed check into a different failure).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from ansible_collections.qadhya.dbops.plugins.module_utils._env_file import is_secret_key
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

LEVELS = ("error", "warning")
MASK = "********"
SOURCE = "qadhya.dbops"
# Kept short so that a dead receiver costs a check run seconds, not minutes.
DEFAULT_TIMEOUT = 10


def url_secrets(url):
    """The parts of a DSN or webhook URL that give access: the whole URL, its
    user info (a Sentry key) and its path and query (a Slack or Mattermost
    hook is authorised by its path alone)."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [url]
    if parts.username:
        found.append(parts.username)
    if parts.password:
        found.append(parts.password)
    # A bare "/1" (a Sentry project id) or "/" is no secret and would mask
    # every "1" of the text.
    if len(parts.path.strip("/")) >= 8:
        found.append(parts.path)
    if parts.query:
        found.append(parts.query)
    return sorted(set(found), key=len, reverse=True)


def scrub(value, secrets):
    """`value` with every secret-looking key's value masked and every known
    secret string replaced, at any depth (a details dict comes from a
    playbook, which may hand over more than it means to)."""
    if isinstance(value, dict):
        return {str(k): (MASK if is_secret_key(str(k)) and v not in (None, "") else scrub(v, secrets))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, MASK)
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value), secrets)


def build(host, check, reason, details, level, secrets=()):
    """The alert as one dict, secrets removed; every receiver gets this content."""
    reason = first_line(scrub(str(reason or ""), secrets), default="no reason given")
    return {
        "source": SOURCE,
        "host": str(host),
        "check": str(check),
        "level": level,
        "reason": reason,
        "details": scrub(dict(details or {}), secrets),
    }


def summary(alert):
    """One line a person reads in a chat channel or a Sentry issue title."""
    return "%s %s on %s: %s" % (alert["level"].upper(), alert["check"], alert["host"], alert["reason"])


def webhook_payload(alert):
    """A Slack/Mattermost incoming-webhook body: `text` is what both show;
    the structured fields beside it are ignored by them and read by anything
    else (a generic receiver, a ticket bridge)."""
    return dict(alert, text="[%s] %s" % (SOURCE, summary(alert)))


def sentry_event(alert):
    """The Sentry event: the summary as its message, host and check as tags
    (what Sentry searches and groups by), the details as extra data. The
    fingerprint groups repeats of one check on one host into one issue."""
    return {
        "message": summary(alert),
        "level": alert["level"],
        "logger": SOURCE,
        "server_name": alert["host"],
        "tags": {"host": alert["host"], "check": alert["check"], "source": SOURCE},
        "extra": {"reason": alert["reason"], "details": alert["details"]},
        "fingerprint": [SOURCE, alert["check"], alert["host"]],
    }


def _safe(text, secrets):
    return first_line(scrub(str(text), secrets), default="unknown error")


def send_webhook(url, alert, timeout=DEFAULT_TIMEOUT, validate_certs=True):
    """POST the alert as JSON to `url`; None when it answered 2xx, else why not."""
    # Imported here: this file is also read by unit tests that only build alerts.
    from ansible.module_utils.urls import open_url

    secrets = url_secrets(url)
    body = json.dumps(webhook_payload(alert), ensure_ascii=False, sort_keys=True).encode("utf-8")
    try:
        resp = open_url(url, data=body, method="POST", timeout=timeout, validate_certs=validate_certs,
                        headers={"Content-Type": "application/json"}, follow_redirects="none")
        status = resp.getcode()
        resp.close()
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # HTTPError (4xx/5xx), URLError (refused, DNS), timeouts, TLS: all
        # mean the receiver did not take the alert.
        code = getattr(exc, "code", None)
        return _safe(("HTTP %s: " % code if code else "") + _exc_text(exc), secrets)
    if not 200 <= int(status or 0) < 300:
        return "HTTP %s" % status
    return None


def _exc_text(exc):
    # URLError holds the socket error in `reason`; its str() adds "<urlopen error ...>".
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def send_sentry(dsn, alert, timeout=DEFAULT_TIMEOUT):
    """Send the alert to the Sentry DSN through sentry-sdk; None when the
    server accepted it, else why not."""
    secrets = url_secrets(dsn)
    try:
        # pylint: disable-next=import-outside-toplevel
        import sentry_sdk
        from sentry_sdk.transport import HttpTransport  # pylint: disable=import-outside-toplevel
    except ImportError:
        return "sentry-sdk is not installed on the controller (pip install -r requirements.txt)"

    outcome = {}

    class _Transport(HttpTransport):
        """Sends in the calling thread and remembers the answer: the SDK's own
        transport queues to a background thread and only logs a failure,
        which would leave us unable to tell a delivered alert from a lost one."""

        TIMEOUT = timeout

        def capture_envelope(self, envelope):
            try:
                self._send_envelope(envelope)
                outcome.setdefault("error", None)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                outcome["error"] = _exc_text(exc)

        def _handle_response(self, response, envelope):
            if not 200 <= response.status < 300:
                outcome["error"] = "HTTP %s" % response.status
            super()._handle_response(response, envelope)

        def flush(self, timeout, callback=None):
            # Nothing is queued; the SDK's own flush would send a client report.
            del timeout, callback

    try:
        client = sentry_sdk.Client(
            dsn=dsn, transport=_Transport, default_integrations=False, auto_enabling_integrations=False,
            max_breadcrumbs=0, attach_stacktrace=False, include_local_variables=False,
            include_source_context=False, send_client_reports=False, server_name=alert["host"])
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # BadDsn and the like: the message names the DSN, which is a secret.
        return "invalid Sentry DSN (%s); fix dbops_alert_sentry_dsn" % _safe(exc, secrets)
    try:
        event_id = client.capture_event(sentry_event(alert))
    except Exception as exc:  # pylint: disable=broad-exception-caught
        return _safe(exc, secrets)
    finally:
        client.close(timeout=0)
    if event_id is None:
        return "the SDK dropped the event"
    if "error" not in outcome:
        return "nothing was sent (rate limited by the server?)"
    if outcome["error"]:
        return _safe(outcome["error"], secrets)
    return None


SEND = {"sentry": send_sentry, "webhook": send_webhook}
