# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Action for qadhya.dbops.alert (docs in plugins/modules/alert.py).

An action plugin, so it runs on the controller and never on the Docker host:
the host that is failing is the last place to send an alert from (its disk
may be full, its network down), sentry-sdk then needs installing only where
Ansible runs, and the DSN and webhook URL never travel to the host.
"""

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _alert as alert

display = Display()

ARGUMENT_SPEC = dict(
    sentry_dsn=dict(type="str", no_log=True),
    webhook_url=dict(type="str", no_log=True),
    host=dict(type="str"),
    check=dict(type="str", required=True),
    reason=dict(type="str", required=True),
    details=dict(type="dict", default={}),
    level=dict(type="str", default="error", choices=list(alert.LEVELS)),
    timeout=dict(type="int", default=alert.DEFAULT_TIMEOUT),
    validate_certs=dict(type="bool", default=True),
    redact=dict(type="list", elements="str", default=[], no_log=True),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        _args, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        receivers = {name: params[opt] for name, opt in (("sentry", "sentry_dsn"), ("webhook", "webhook_url"))
                     if params[opt]}
        secrets = [s for s in params["redact"] if s]
        for url in receivers.values():
            secrets += alert.url_secrets(url)
        secrets.sort(key=len, reverse=True)
        content = alert.build(params["host"] or task_vars.get("inventory_hostname", "localhost"),
                              params["check"], params["reason"], params["details"], params["level"], secrets)

        # Sending is not a change to any managed system: changed stays false,
        # so that a red check.yml still reports changed=0.
        result.update(changed=False, alert=content, delivered=[], undelivered=[], reasons={})
        if not receivers:
            result["msg"] = "no alert receiver configured (dbops_alert_sentry_dsn, dbops_alert_webhook_url)"
            return result
        if self._task.check_mode:
            result["would_deliver"] = sorted(receivers)
            result["msg"] = "check mode: would alert %s" % ", ".join(sorted(receivers))
            return result

        for name in sorted(receivers):
            if name == "webhook":
                error = alert.send_webhook(receivers[name], content, params["timeout"],
                                           params["validate_certs"])
            else:
                error = alert.send_sentry(receivers[name], content, params["timeout"])
            if error is None:
                result["delivered"].append(name)
            else:
                # A receiver that is down is reported, never a task failure:
                # the check or backup that raised the alert keeps its own result.
                result["undelivered"].append(name)
                result["reasons"][name] = error
                result.setdefault("warnings", []).append("alert not delivered to %s: %s" % (name, error))
        result["msg"] = "alert %s on %s: delivered to %s%s" % (
            content["check"], content["host"], ", ".join(result["delivered"]) or "no receiver",
            ("; not delivered to " + ", ".join(result["undelivered"])) if result["undelivered"] else "")
        return result
