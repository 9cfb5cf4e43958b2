"""Shared fixtures for integration tests against the real lab (Docker required).

`lab_instance` brings up a dedicated lab instance for the session (never the
`default` one a developer may be using) and removes it at the end. The
helpers themselves live in labkit.py.
"""

import json

import pytest
from labkit import IT_INSTANCE, LabInstance, docker, free_port, lab_up, run_lab


@pytest.fixture(scope="session")
def lab_instance():
    """A lab instance in the incident state for the whole session."""
    if docker("version", "--format", "{{.Server.Version}}", check=False).returncode != 0:
        pytest.fail("no Docker engine answers; the integration tests need one")
    run_lab("up", "--instance", IT_INSTANCE, "--port", free_port())
    info = json.loads(run_lab("env", "--instance", IT_INSTANCE).stdout)
    yield LabInstance(info)
    run_lab("down", "--instance", IT_INSTANCE, check=False)


@pytest.fixture
def incident_lab(lab_instance):
    """The session instance, reset to the incident state after the test."""
    yield lab_instance
    lab_instance.reset("--mode", "mounted")


@pytest.fixture(scope="module")
def module_lab(request):
    """A lab instance of the test module's own (named by its INSTANCE), for the module."""
    name = request.module.INSTANCE
    inst = lab_up(name)
    yield inst
    run_lab("down", "--instance", name, check=False)
