# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the validate_inputs action: templating of the host's values, the task's arguments."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.qadhya.dbops.plugins.action.validate_inputs import ActionModule

try:  # ansible-core 2.19+ renders only templates marked as trusted (inventory values are)
    from ansible.template import trust_as_template
except ImportError:  # older cores render every string
    def trust_as_template(value):
        return value


def run(task_vars, required=(), path="/srv/collection/playbooks/backup.yml:17"):
    task = MagicMock(async_val=0, check_mode=False, args={"required": list(required)},
                     action="validate_inputs")
    task.get_path.return_value = path
    connection = MagicMock()
    connection._shell.tmpdir = "/tmp/unused"
    templar = Templar(loader=DataLoader(), variables=task_vars)
    action = ActionModule(task, connection, MagicMock(), DataLoader(), templar, None)
    return action.run(task_vars=task_vars)


HOST = {"inventory_hostname": "vps-1", "app_root": "/srv/shop",
        "dbops_env_file": trust_as_template("{{ app_root }}/.env"), "dbops_db_container": "shop-db",
        "dbops_backup_dir": "/srv/backups", "dbops_health_timeout": trust_as_template("{{ 30 * 2 }}")}


def test_templated_values_are_judged_after_templating():
    result = run(HOST, ["dbops_env_file", "dbops_db_container", "dbops_backup_dir"])
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["checked"] == ["dbops_backup_dir", "dbops_db_container", "dbops_env_file",
                                 "dbops_health_timeout"]


def test_problems_are_one_line_each_and_name_the_playbook():
    host = dict(HOST, dbops_target_dbb="mydata", dbops_db_password=trust_as_template("{{ vault_pw }}"))
    del host["dbops_env_file"]
    result = run(host, ["dbops_env_file", "dbops_db_container"])
    assert result["failed"] is True
    header, *lines = result["msg"].splitlines()
    assert header == "3 problems with the dbops_* variables, nothing was run:"
    assert lines[0] == ("unknown variable dbops_target_dbb; did you mean dbops_target_db? "
                        "(rename it where it is set)")
    assert lines[1].startswith("dbops_db_password cannot be resolved (") and "vault_pw" in lines[1]
    assert lines[2].startswith("dbops_env_file is required by backup.yml but not set")
    assert "checked" not in result


def test_an_ad_hoc_run_says_this_playbook():
    result = run({}, ["dbops_env_file"], path=None)
    assert "dbops_env_file is required by this playbook but not set" in result["msg"]


def test_a_required_name_outside_the_list_is_the_task_s_mistake():
    with pytest.raises(AnsibleActionFail, match="dbops_target_dbb are not documented"):
        run(HOST, ["dbops_target_dbb"])
