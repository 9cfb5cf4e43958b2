"""Helpers for the integration tests on the real lab (Docker required).

Imported by conftest.py (fixtures) and by test files that need their own lab
instances; tests/integration is on sys.path when pytest collects it.
"""

import hashlib
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
# QADHYA_IT_PREFIX keeps two test runs on one Docker host apart (every instance name starts with it).
IT_PREFIX = os.environ.get("QADHYA_IT_PREFIX", "")


def instance_name(base):
    """The lab instance name a test module uses: `base` behind the run's prefix."""
    return IT_PREFIX + base


# One session instance per pytest-xdist worker: workers run test files side by side.
IT_INSTANCE = instance_name(os.environ.get("QADHYA_IT_INSTANCE", "itlab")) + (
    "-" + os.environ["PYTEST_XDIST_WORKER"] if os.environ.get("PYTEST_XDIST_WORKER") else "")


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

    def login_args(self, **extra):
        """Module arguments reaching this instance's server as its superuser."""
        return {"db_container": self.db, "login_user": self.info["db_user"],
                "login_password": self.info["db_password"], **extra}

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


def lab_up(name, *extra):
    """Bring instance `name` up in the incident state on a free port; its LabInstance."""
    run_lab("up", "--instance", name, "--port", free_port(), *extra)
    return LabInstance(json.loads(run_lab("env", "--instance", name).stdout))


def host_vars(info, work, **extra):
    """The documented dbops_* inventory variables for one lab instance (`lab.py env`)."""
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "dbops_env_file": str(info["env_file"]),
        "dbops_db_container": info["db_container"],
        "dbops_app_container": info["app_container"],
        "dbops_target_db": "qadhya",
        "dbops_health_url": info["health_url"],
        "dbops_backup_dir": str(Path(work) / "backups"),
        "dbops_migrations_dir": str(REPO / "migrations"),
        "dbops_report_dir": str(Path(work) / "reports"),
        **extra,
    }


def write_inventory(path, hosts):
    """A JSON inventory at `path`: group `lab` holding {host name: variables}."""
    Path(path).write_text(json.dumps({"all": {"children": {"lab": {"hosts": hosts}}}}))
    return Path(path)


def run_playbook(playbook, inventory, *args, timeout=900, env=None):
    """ansible-playbook from the venv with the checkout's ansible.cfg; the CompletedProcess."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1", **(env or {})}
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-i", str(inventory),
            *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                          check=False)


def parse_result(stdout):
    """The host result from the json callback (verbose lines may precede it)."""
    start = stdout.find("\n{\n") + 1 if not stdout.startswith("{") else 0
    try:
        doc = json.loads(stdout[start:])
    except ValueError:
        return None
    result = doc["plays"][0]["tasks"][0]["hosts"]["localhost"]
    result["failed"] = bool(result.get("failed"))
    return result


def run_module(module, args, check=False, verbose=False):
    """Run one module ad hoc; returns (result dict, full output text)."""
    cmd = [
        str(Path(sys.executable).with_name("ansible")),
        "localhost", "-i", "localhost,", "-c", "local",
        "-e", "ansible_python_interpreter=%s" % sys.executable,
        "-m", "qadhya.dbops.%s" % module, "-a", json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if verbose:
        cmd.append("-vvv")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                               "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    output = proc.stdout + proc.stderr
    result = parse_result(proc.stdout)
    if result is not None:
        return result, output
    pytest.fail("no module result in ansible output:\n" + output)


def fake_backup(directory, prefix, database, stamp, verified=True):
    """A backup + manifest as db_backup writes them (retention reads only the manifest)."""
    name = "%s-%s.dump" % (prefix, stamp)
    data = b"PGDMP" + stamp.encode()
    (directory / name).write_bytes(data)
    manifest = dict(tool="qadhya.dbops", manifest_version=1, database=database, format="custom", file=name,
                    bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), row_counts={},
                    verified=dict(level="structure", ok=verified))
    (directory / (name + ".manifest.json")).write_text(json.dumps(manifest))
    return name
