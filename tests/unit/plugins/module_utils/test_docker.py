# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for _docker.container_ip: the database container's address, or one line naming the fix."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _docker


def module_inspecting(state, networks=None):
    module = MagicMock()
    module.get_bin_path.return_value = "/usr/bin/docker"
    info = {"State": state, "NetworkSettings": {"Networks": networks or {}}}
    module.run_command.return_value = (0, json.dumps([info]), "")
    return module


def test_the_address_of_a_running_container():
    module = module_inspecting({"Running": True, "Status": "running"},
                               {"none": {"IPAddress": ""}, "app": {"IPAddress": "172.18.0.2"}})
    assert _docker.container_ip(module, "db") == "172.18.0.2"


@pytest.mark.parametrize(("state", "line"), [
    ({"Running": False, "Status": "exited"},
     "container 'db' is not running (exited); start it (docker start db)"),
    ({"Running": True, "Paused": True, "Status": "paused"},
     "container 'db' is paused; unpause it (docker unpause db)"),
])
def test_a_container_that_cannot_answer_is_one_line_naming_the_command(state, line):
    with pytest.raises(_docker.DockerError) as raised:
        _docker.container_ip(module_inspecting(state, {"app": {"IPAddress": "172.18.0.2"}}), "db")
    assert str(raised.value) == line
