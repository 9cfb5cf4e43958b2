# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for _docker: the database container's address (or one line naming the fix), a container's state."""

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


def test_container_state_keeps_of_config_env_only_the_keys_asked_for():
    module = MagicMock()
    module.get_bin_path.return_value = "/usr/bin/docker"
    info = {"State": {"Running": True, "Paused": True, "Status": "paused"},
            "Config": {"Env": ["DB_NAME=old", "DB_PASSWORD=s3cret", "DB_NAME=moncabinet", "PATH=/bin"],
                       "Labels": {"com.docker.compose.project": "moncabinet"}}}
    module.run_command.return_value = (0, json.dumps([info]), "")
    state = _docker.container_state(module, "app", env_keys=("DB_NAME",))
    # The last DB_NAME wins, as in Docker; the password never leaves the inspect.
    assert state == {"status": "paused", "running": True, "env": {"DB_NAME": "moncabinet"},
                     "labels": {"com.docker.compose.project": "moncabinet"}}
    assert "s3cret" not in json.dumps(state)


def test_container_state_is_none_for_a_missing_container_and_an_error_otherwise():
    module = MagicMock()
    module.get_bin_path.return_value = "/usr/bin/docker"
    module.run_command.return_value = (1, "", "Error: No such container: app")
    assert _docker.container_state(module, "app") is None
    module.run_command.return_value = (1, "", "Cannot connect to the Docker daemon")
    with pytest.raises(_docker.DockerError, match="cannot inspect container 'app'"):
        _docker.container_state(module, "app")
