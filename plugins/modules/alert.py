# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: alert
short_description: Send an alert about a failed check, backup or drill to Sentry and/or a webhook
version_added: 0.3.0
author: qadhya platform team (@qadhya)
description:
  - Sends one alert - which host, which check failed, why in one line, and structured details - to a
    Sentry project through C(sentry-sdk) (O(sentry_dsn)) and/or as a JSON POST to a generic incoming
    webhook (O(webhook_url)), Slack and Mattermost compatible.
  - The webhook body holds a C(text) field (what Slack and Mattermost show) beside the structured
    fields C(source), C(host), C(check), C(level), C(reason) and C(details).
  - The Sentry event has the same line as its message, C(host) and C(check) as tags and the details
    as extra data; repeats of one check on one host are grouped into one Sentry issue.
  - Secrets never leave in an alert - the values of secret-looking keys of O(details) (names holding
    PASS, PWD, SECRET, TOKEN, KEY, CREDENTIAL or PRIVATE), the DSN, its key, the webhook URL and every
    string of O(redact) are masked in everything sent and returned.
  - Never fails because a receiver is down, slow or refuses; the task succeeds, RV(undelivered) names
    the receiver, RV(reasons) says why and a warning is printed, so the failed check keeps its own
    result and a broken alert path is still seen.
  - With neither O(sentry_dsn) nor O(webhook_url) nothing is sent and the task succeeds.
  - Runs on the controller and never connects to the host (it is an action plugin); C(sentry-sdk)
    is needed on the controller only (C(requirements.txt)).
options:
  sentry_dsn:
    description:
      - Sentry DSN of the project, C(https://<key>@<sentry host>/<project id>); usually
        C(dbops_alert_sentry_dsn) from a vault.
    type: str
  webhook_url:
    description:
      - URL of an incoming webhook that takes a JSON POST; usually C(dbops_alert_webhook_url) from a vault
        (a Slack or Mattermost hook URL is a secret by itself).
    type: str
  host:
    description: The host the alert is about; defaults to the task's C(inventory_hostname).
    type: str
  check:
    description: What failed, for example C(check), C(backup) or C(drill).
    type: str
    required: true
  reason:
    description: Why, in one line; only its first line is sent.
    type: str
    required: true
  details:
    description: Structured details sent beside the reason (for example the failed checks, a report path).
    type: dict
    default: {}
  level:
    description: Severity shown by the receivers.
    type: str
    choices: [error, warning]
    default: error
  timeout:
    description: Seconds each receiver is given to answer.
    type: int
    default: 10
  validate_certs:
    description: Check the webhook's TLS certificate.
    type: bool
    default: true
  redact:
    description:
      - Strings masked wherever they occur in the alert, for values that are secret but not under a
        secret-looking key.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
notes:
  - This is an action plugin; it needs no Python or connection on the managed host.
  - In check mode nothing is sent; RV(would_deliver) names the receivers.
  - An alert is not a change to a managed system, so C(changed) is always false.
"""

EXAMPLES = r"""
- name: Report | Alert on a critical check
  qadhya.dbops.alert:
    sentry_dsn: "{{ dbops_alert_sentry_dsn | default(omit) }}"
    webhook_url: "{{ dbops_alert_webhook_url | default(omit) }}"
    check: check
    reason: "backup: no verified backup of qadhya in /srv/backups; run backup.yml"
    details:
      failed_checks: [backup]
  when: dbops_job.result == 'critical'
"""

RETURN = r"""
delivered:
  description: The receivers that took the alert (C(sentry), C(webhook)).
  returned: always
  type: list
  elements: str
  sample: [sentry]
undelivered:
  description: The receivers that did not take it; see RV(reasons).
  returned: always
  type: list
  elements: str
  sample: [webhook]
reasons:
  description: Why each receiver of RV(undelivered) did not take the alert, one line each.
  returned: always
  type: dict
  sample: {webhook: "[Errno 111] Connection refused"}
would_deliver:
  description: In check mode, the receivers an alert would go to.
  returned: check mode, with a receiver
  type: list
  elements: str
  sample: [sentry, webhook]
alert:
  description: What was sent, secrets masked.
  returned: always
  type: dict
  sample:
    source: qadhya.dbops
    host: db1
    check: check
    level: error
    reason: "backup: no verified backup of qadhya; run backup.yml"
    details: {failed_checks: [backup]}
msg:
  description: One line saying where the alert went.
  returned: always
  type: str
  sample: "alert check on db1: delivered to sentry; not delivered to webhook"
"""
