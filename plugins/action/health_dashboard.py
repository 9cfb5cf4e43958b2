# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Action for qadhya.dbops.health_dashboard (docs in plugins/modules/health_dashboard.py).

It runs on the controller, where the run reports already are: the history
of every host of the play is read and one page written there, without a
connection to any host.
"""

import os
from datetime import UTC, datetime

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _dashboard as dash
from ansible_collections.qadhya.dbops.plugins.plugin_utils._files import write_json

ARGUMENT_SPEC = dict(
    report_dir=dict(type="path", required=True),
    environment=dict(type="str", required=True),
    hosts=dict(type="list", elements="str", required=True),
    records=dict(type="list", elements="dict", default=[]),
    history_days=dict(type="int", default=90),
    drill_dir=dict(type="path"),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        del tmp
        _args, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        env = params["environment"]
        if not env or "/" in env or env.startswith("."):
            raise AnsibleActionFail("health_dashboard: environment %r is not a file name; set "
                                    "dbops_environment to a plain name such as prod" % env)
        report_dir = os.path.expanduser(params["report_dir"])
        history_dir = os.path.join(report_dir, "history")
        drill_dir = os.path.expanduser(params["drill_dir"] or os.path.join(report_dir, "drill"))
        path = os.path.join(report_dir, "dashboard", env + ".html")
        hosts = list(dict.fromkeys(params["hosts"]))
        now = datetime.now(UTC)

        records = [r for r in params["records"] if r.get("host") and dash.stamp(r.get("started_at"))]
        written = [dash.history_path(history_dir, r) for r in records]
        # Check mode writes nothing, as for the reports; the page still
        # counts this run's records, so the result says what it would show.
        removed = []
        if not self._task.check_mode:
            for record, target in zip(records, written, strict=True):
                write_json(target, record)
            removed = dash.prune(history_dir, set(hosts), now, params["history_days"])
        history = dash.read_records(history_dir, set(hosts))
        for record in records if self._task.check_mode else []:
            history.setdefault(record["host"], []).append(record)
        drills = dash.newest_drills(drill_dir, set(hosts))
        views = [dash.host_view(h, history.get(h, []), drills.get(h), now) for h in hosts]
        page = dash.render(env, views, now)
        if not self._task.check_mode:
            write_json(path, page)

        # Run records on the controller, not managed state: changed stays false.
        result.update(
            changed=False, path=path, history=written, pruned=removed,
            status=dash.worst(v["status"] for v in views) if views else "unknown",
            hosts={v["host"]: v["status"] for v in views},
            problems=["%s %s: %s" % (v["host"], p[1], p[2]) for v in views for p in v["problems"]],
            msg="dashboard %s%s: %s" % (path, " (check mode: not written)" if self._task.check_mode else "",
                                        ", ".join("%s %s" % (v["host"], v["status"]) for v in views)))
        return result
