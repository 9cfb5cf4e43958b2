"""Shared fixtures for integration tests against the real lab (Docker required).

`lab_instance` brings up a dedicated lab instance for the session (never the
`default` one a developer may be using) and removes it at the end.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_PY = REPO / "lab" / "lab.py"
IT_INSTANCE = os.environ.get("QADHYA_IT_INSTANCE", "itlab")


def run_lab(*args, env=None, check=True, timeout=900):
    """Run `lab.py ARGS` with the test's Python; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(LAB_PY), *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"lab.py {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url, timeout=5):
    """(status, parsed JSON body or None); status None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, None
    except (urllib.error.URLError, OSError):
        return None, None


def wait_for(predicate, timeout=20, interval=0.1):
    """Poll until predicate() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def docker(*args, check=True):
    return subprocess.run(["docker", *map(str, args)], capture_output=True, text=True, check=check)


class LabInstance:
    """A running lab instance, described by `lab.py env`."""

    # The module helpers, reachable from the fixture without importing conftest
    # by name (fragile when several conftest.py files exist).
    run_lab = staticmethod(run_lab)
    docker = staticmethod(docker)
    free_port = staticmethod(free_port)
    http_get = staticmethod(http_get)
    wait_for = staticmethod(wait_for)

    def __init__(self, info):
        self.info = info
        self.name = info["name"]
        self.db = info["db_container"]
        self.app = info["app_container"]
        self.env_file = Path(info["env_file"])
        self.health_url = info["health_url"]

    def psql(self, database, sql):
        """Rows (lists of str) of `sql` run by psql inside the db container."""
        proc = docker("exec", self.db, "psql", "-U", self.info["db_user"], "-d", database,
                      "-XAt", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql)
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def docker_health(self, container=None):
        """Docker's health status of a container (the app by default)."""
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{end}}"
        return docker("inspect", "--format", fmt, container or self.app).stdout.strip()

    def health(self):
        return http_get(self.health_url)

    def status(self):
        return json.loads(run_lab("status", "--instance", self.name, "--json").stdout)

    def reset(self, *extra):
        run_lab("reset", "--instance", self.name, *extra)

    def set_env(self, key, value):
        """Rewrite one key by atomic rename, the way editors and Ansible do."""
        lines = self.env_file.read_text(encoding="utf-8").splitlines(keepends=True)
        out = [f"{key}={value}\n" if line.startswith(f"{key}=") else line for line in lines]
        tmp = self.env_file.with_name(".env.test-tmp")
        tmp.write_text("".join(out), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self.env_file)


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
