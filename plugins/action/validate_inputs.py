# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Action for qadhya.dbops.validate_inputs (docs in plugins/modules/validate_inputs.py).

It runs on the controller because only there are all of a host's variables
visible at once - inventory, group_vars, host_vars and -e extra vars - and
nothing needs to reach the host to judge them.
"""

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _inputs as inputs


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _VALID_ARGS = frozenset(("required",))

    def _playbook_name(self):
        path = self._task.get_path() or ""
        name = os.path.basename(path.rsplit(":", 1)[0])
        return name or "this playbook"

    def _resolve(self, task_vars):
        """The host's dbops_* values templated, and the errors of those that cannot be."""
        values, unresolved = {}, {}
        for name in sorted(k for k in task_vars if inputs.is_input_name(k)):
            try:
                values[name] = self._templar.template(task_vars[name])
            except AnsibleError as exc:
                unresolved[name] = (to_text(exc).strip().splitlines() or ["undefined"])[0]
        return values, unresolved

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        _args, params = self.validate_argument_spec(
            argument_spec=dict(required=dict(type="list", elements="str", default=[])))
        required = params["required"]

        spec = inputs.load_spec()
        bad = inputs.check_required_names(spec, required)
        if bad:
            raise AnsibleActionFail("validate_inputs: required names %s are not documented dbops_* "
                                    "variables; fix the task or roles/inputs/meta/argument_specs.yml"
                                    % ", ".join(bad))

        values, unresolved = self._resolve(task_vars)
        problems = inputs.find_problems(spec, values, required, self._playbook_name(), unresolved)
        result["changed"] = False
        # The lines go in msg only: Ansible already prints msg twice on a failure.
        if problems:
            result["failed"] = True
            result["msg"] = "%d problem%s with the dbops_* variables, nothing was run:\n%s" % (
                len(problems), "" if len(problems) == 1 else "s", "\n".join(problems))
        else:
            result["checked"] = sorted(values)
            result["msg"] = "%d dbops_* variables checked%s" % (
                len(values), ("; required present: " + ", ".join(required)) if required else "")
        return result
