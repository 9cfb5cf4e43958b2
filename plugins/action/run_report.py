# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Action for qadhya.dbops.run_report (docs in plugins/modules/run_report.py).

A run's report is written on the controller, where the run is: by this
process, without a module sent anywhere. The three or four built-in file
tasks it replaces ran five modules, each a process of its own, for files
the controller can write itself in a few milliseconds.
"""

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.action import ActionBase

from ansible_collections.qadhya.dbops.plugins.plugin_utils._files import write_text

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    record=dict(type="dict", required=True),
    markdown=dict(type="str", required=True),
    latest=dict(type="str"),
)


def as_json(record):
    return json.dumps(record, cls=AnsibleJSONEncoder, indent=4, sort_keys=True, ensure_ascii=False) + "\n"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        del tmp
        _args, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        base = os.path.expanduser(params["path"])
        if not os.path.basename(base):
            raise AnsibleActionFail("run_report: path %r names a directory, not a report" % params["path"])
        text = as_json(params["record"])
        files = {base + ".json": text, base + ".md": params["markdown"].rstrip("\n") + "\n"}
        if params["latest"]:
            files[os.path.join(os.path.dirname(base), params["latest"] + "-latest.json")] = text
        # Check mode writes nothing; the paths still say where the report would go.
        if not self._task.check_mode:
            try:
                for path, content in files.items():
                    write_text(path, content)
            except OSError as exc:
                raise AnsibleActionFail("cannot write the report %s: %s; set dbops_report_dir to a "
                                        "writable directory" % (exc.filename or base, exc.strerror)) from exc
        # Run records on the controller, not managed state: changed stays false.
        result.update(changed=False, json_path=base + ".json", markdown_path=base + ".md",
                      paths=list(files), written=not self._task.check_mode)
        return result
