# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qadhya.dbops.app_container through real `ansible` against a lab instance whose
app took its env at creation (mode "created"): recreate, refusals, rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAB_PY = REPO / "lab" / "lab.py"
INSTANCE = labkit.instance_name("it-appctr")
EXTRA_NET = "qadhya-it-appctr-extra"
PREVIOUS = ".dbops-previous"
TIMINGS = {}


docker = labkit.docker


def inspect(name):
    proc = docker("inspect", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


http_get = labkit.http_get


free_port = labkit.free_port


def run_module(args, check=False):
    """One ad hoc run; returns (result dict with `failed`, full output).

    The minimal callback prints `host | STATUS => {json}`; the json callback
    would overwrite the module's own `action` key with the task's action.
    """
    cmd = [str(Path(sys.executable).with_name("ansible")), "localhost", "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable,
           "-m", "qadhya.dbops.app_container", "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
                               "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal"})
    out = proc.stdout
    marker = out.find("localhost | ")
    start = out.find("{", marker)
    try:
        result = json.loads(out[start:])
    except ValueError:
        pytest.fail("no module result in ansible output:\n" + out + proc.stderr)
    # the callback drops the `failed` key; the status word says it
    result["failed"] = bool(result.get("failed")) or out[marker:start].strip().endswith("FAILED! =>")
    return result, out + proc.stderr


def wait_http_200(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(url)[0] == 200:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def lab():
    """A created-mode lab instance whose app is also on a second network with an alias."""
    port = free_port()
    proc = subprocess.run([sys.executable, str(LAB_PY), "up", "--instance", INSTANCE, "--port", str(port),
                           "--mode", "created"], capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        pytest.fail("lab.py up failed: " + proc.stderr.strip())
    info = json.loads(subprocess.run([sys.executable, str(LAB_PY), "env", "--instance", INSTANCE],
                                     capture_output=True, text=True, check=True).stdout)
    docker("network", "rm", EXTRA_NET, check=False)
    docker("network", "create", "--label", "qadhya.lab.instance=" + INSTANCE, EXTRA_NET)
    docker("network", "connect", "--alias", "web-frontend", EXTRA_NET, info["app_container"])
    yield info
    docker("rm", "-f", info["app_container"] + PREVIOUS, check=False)
    subprocess.run([sys.executable, str(LAB_PY), "down", "--instance", INSTANCE], capture_output=True,
                   check=False, timeout=120)
    docker("network", "rm", EXTRA_NET, check=False)
    if TIMINGS:
        sys.stderr.write("\napp_container timings (s): %s\n" % json.dumps(TIMINGS, sort_keys=True))


def base_args(lab, **kw):
    args = dict(name=lab["app_container"], state="started", env_file=lab["env_file"],
                health_url=lab["health_url"], health_timeout=30)
    args.update(kw)
    return args


def config_view(info):
    """What a recreate must keep, in comparable form."""
    short = info["Id"][:12]
    config = dict(info["Config"])
    config.pop("Env")
    if config.get("Hostname") == short:
        config.pop("Hostname")
    networks = {
        name: {"aliases": sorted(a for a in (ep.get("Aliases") or []) if a != short),
               "ipam": ep.get("IPAMConfig"), "links": ep.get("Links")}
        for name, ep in info["NetworkSettings"]["Networks"].items()
    }
    return {"Config": config, "HostConfig": info["HostConfig"], "Image": info["Image"],
            "Mounts": info["Mounts"], "Networks": networks, "Path": info["Path"], "Args": info["Args"]}


def env_of(info):
    return dict(item.split("=", 1) for item in info["Config"]["Env"])


def test_stop_check_then_real_then_idempotent(lab):
    app = lab["app_container"]
    before = inspect(app)
    result, _ = run_module(dict(name=app, state="stopped"), check=True)
    assert result["changed"] is True and result["would"] == "stopped"
    assert inspect(app)["State"]["Running"] is True
    assert inspect(app)["Id"] == before["Id"]

    result, _ = run_module(dict(name=app, state="stopped", stop_timeout=10))
    assert result["changed"] is True and result["action"] == "stopped"
    TIMINGS["stop"] = result["elapsed_s"]
    assert inspect(app)["State"]["Running"] is False
    assert result["elapsed_s"] < 5, "the lab app exits on SIGTERM; a stop near 10 s means it was killed"

    result, _ = run_module(dict(name=app, state="stopped"))
    assert result["changed"] is False and result["action"] == "none"


def test_bare_restart_in_created_mode_is_refused(lab):
    app = lab["app_container"]
    before = inspect(app)
    result, _ = run_module(base_args(lab, strategy="restart", env={"DB_NAME": "moncabinet"}))
    assert result["failed"]
    assert "took its env at creation" in result["msg"] and "strategy=recreate" in result["msg"]
    assert "\n" not in result["msg"]
    after = inspect(app)
    assert after["Id"] == before["Id"] and after["State"]["Running"] == before["State"]["Running"]


def test_recreate_keeps_exact_config(lab):
    app = lab["app_container"]
    before = inspect(app)
    assert env_of(before)["DB_NAME"] == "qadhya"
    assert before["State"]["Running"] is False  # stopped by the first test, as in the playbook

    result, _ = run_module(base_args(lab, env={"DB_NAME": "moncabinet"}), check=True)
    assert result["changed"] is True and result["would"] == "recreated" and result["strategy"] == "recreate"
    unchanged = inspect(app)
    assert unchanged["Id"] == before["Id"] and unchanged["State"]["Running"] is False
    assert env_of(unchanged)["DB_NAME"] == "qadhya"

    result, _ = run_module(base_args(lab, env={"DB_NAME": "moncabinet"}))
    assert not result["failed"], result.get("msg")
    assert result["changed"] is True and result["action"] == "recreated" and result["strategy"] == "recreate"
    assert result["env_mode"] == "created"
    assert result["health_status"] == "healthy" and result["http_status"] == 200
    assert result["health_body"] == {"status": "ok", "database": "moncabinet", "documents": 580}
    assert result["effective_env"] == {"DB_NAME": "moncabinet"}
    assert result["previous_config_diff"] == ["Config.Env", "Created", "Id"]
    TIMINGS["recreate_start_to_200"] = result["elapsed_s"]

    after = inspect(app)
    assert after["Id"] != before["Id"] and after["Id"] == result["container_id"]
    assert inspect(app + PREVIOUS) is None and inspect(before["Id"]) is None
    # identical configuration: ports, binds, networks + aliases, healthcheck, labels, restart policy, cmd
    assert config_view(after) == config_view(before)
    assert after["HostConfig"]["PortBindings"] == before["HostConfig"]["PortBindings"]
    assert after["NetworkSettings"]["Networks"][EXTRA_NET]["Aliases"][0] == "web-frontend"
    assert set(after["NetworkSettings"]["Networks"]) == {EXTRA_NET, "qadhya-lab-" + INSTANCE}
    assert after["Config"]["Healthcheck"] == before["Config"]["Healthcheck"]
    assert after["Config"]["Labels"] == before["Config"]["Labels"]
    assert after["HostConfig"]["RestartPolicy"] == before["HostConfig"]["RestartPolicy"]
    assert after["Config"]["Cmd"] == before["Config"]["Cmd"]
    old_env, new_env = env_of(before), env_of(after)
    assert new_env.pop("DB_NAME") == "moncabinet" and old_env.pop("DB_NAME") == "qadhya"
    assert new_env == old_env  # DB_PASSWORD and the rest untouched
    assert list(env_of(after)) == list(env_of(before))  # same order
    assert http_get(lab["health_url"]) == (200, {"status": "ok", "database": "moncabinet", "documents": 580})

    result, _ = run_module(base_args(lab, env={"DB_NAME": "moncabinet"}))
    assert result["changed"] is False and result["action"] == "none"
    assert inspect(app)["Id"] == after["Id"]


def test_failed_recreate_puts_old_container_back_stopped(lab):
    app = lab["app_container"]
    before = inspect(app)
    assert before["State"]["Running"] is True

    result, _ = run_module(base_args(lab, env={"DB_NAME": "nonexistent"}), check=True)
    assert result["would"] == "recreated"
    assert inspect(app)["Id"] == before["Id"]

    started = time.monotonic()
    result, _ = run_module(base_args(lab, env={"DB_NAME": "nonexistent"}, health_timeout=5))
    assert result["failed"]
    msg = result["msg"]
    assert "\n" not in msg
    assert "not ready after 5s" in msg and "Docker health" in msg and "answered 503" in msg
    assert "nonexistent" in msg and "previous container is back as %s, stopped" % app in msg
    assert "lab-moncabinet-pw" not in json.dumps(result)
    assert time.monotonic() - started < 40
    back = inspect(app)
    assert back["Id"] == before["Id"], "the old container must be back under its name"
    assert back["State"]["Running"] is False
    assert env_of(back)["DB_NAME"] == "moncabinet"
    assert inspect(app + PREVIOUS) is None
    names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in names if n.startswith(app)] == [app]

    # the caller's rollback: start it with the old env -> a plain start is enough
    result, _ = run_module(base_args(lab, env={"DB_NAME": "moncabinet"}))
    assert not result["failed"], result.get("msg")
    assert result["strategy"] == "restart" and result["action"] == "started"
    assert result["http_status"] == 200 and result["health_status"] == "healthy"
    assert inspect(app)["Id"] == before["Id"]
    TIMINGS["start_stopped_to_200"] = result["elapsed_s"]
    assert wait_http_200(lab["health_url"], 5)


def test_missing_container_fails_clearly(lab):
    result, _ = run_module(dict(name="qadhya-no-such-app", state="started"))
    assert result["failed"] and "not found" in result["msg"] and "create it first" in result["msg"]
