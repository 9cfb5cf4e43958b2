# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Roles update_env and restart_container through real `ansible-playbook` on the lab,
in both app modes: env file bind-mounted (restart) and env taken at creation (recreate)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAB_PY = REPO / "lab" / "lab.py"
INSTANCE = labkit.instance_name("it-envctr")
OWNER = 65534  # nobody/nogroup: proves owner and group are kept

PLAYBOOK = textwrap.dedent("""\
    ---
    - name: Switch the app to another database
      hosts: lab
      gather_facts: false
      vars:
        target_db: moncabinet
      tasks:
        - name: Stage the env change (before the window)
          ansible.builtin.include_role:
            name: qadhya.dbops.update_env
          vars:
            update_env_values: {DB_NAME: "{{ target_db }}"}
            update_env_action: stage

        - name: Stop the app (the window opens)
          ansible.builtin.include_role:
            name: qadhya.dbops.restart_container
          vars:
            restart_container_action: stop
          when: update_env_changes | length > 0

        - name: Write the env file
          ansible.builtin.include_role:
            name: qadhya.dbops.update_env
          vars:
            update_env_values: {DB_NAME: "{{ target_db }}"}
            update_env_action: apply

        - name: Start the app and wait for health 200 (the window closes)
          ansible.builtin.include_role:
            name: qadhya.dbops.restart_container
          vars:
            restart_container_action: start
            restart_container_env: {DB_NAME: "{{ target_db }}"}

        - name: Show the results
          ansible.builtin.debug:
            msg:
              env: "{{ update_env_result | default({}) }}"
              start: "{{ restart_container_result }}"
    """)


def lab_cmd(*args):
    proc = subprocess.run([sys.executable, str(LAB_PY), *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=600)
    if proc.returncode != 0:
        pytest.fail("lab.py %s failed: %s" % (" ".join(map(str, args)), proc.stderr.strip()))
    return proc.stdout


free_port = labkit.free_port


http_get = labkit.http_get


def inspect(name):
    return json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True,
                                     check=True).stdout)[0]


@pytest.fixture(scope="module")
def port():
    port = free_port()
    yield port
    subprocess.run([sys.executable, str(LAB_PY), "down", "--instance", INSTANCE], capture_output=True,
                   check=False, timeout=120)


@pytest.fixture(params=["mounted", "created"])
def lab(request, port, tmp_path):
    """The instance in the incident state in the given mode, its env file made harder:
    double-quoted DB_NAME, an `export`, a comment, a foreign owner."""
    lab_cmd("up", "--instance", INSTANCE, "--port", port, "--mode", request.param)
    info = json.loads(lab_cmd("env", "--instance", INSTANCE))
    env = Path(info["env_file"])
    for old in env.parent.glob(".env.*~"):  # backups of an earlier test; `up` keeps the directory
        old.unlink()
    text = env.read_text(encoding="utf-8")
    if request.param == "mounted":
        # the app parses the file like dotenv: quotes and `export` are fine
        text = text.replace("DB_NAME=qadhya\n", '# the database the app uses\nDB_NAME="qadhya"\n')
        text = text.replace("NODE_ENV=production\n", "export NODE_ENV=production\n")
    else:
        # `docker run --env-file` takes values literally: no quotes, no export
        text = text.replace("DB_NAME=qadhya\n", "# the database the app uses\nDB_NAME=qadhya\n")
    env.write_text(text, encoding="utf-8")
    os.chown(env, OWNER, OWNER)
    os.chmod(env, 0o600)
    if request.param == "created":
        # the container must have been created from this very file
        lab_cmd("recreate-app", "--instance", INSTANCE)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[lab]\nlab1 ansible_connection=local ansible_python_interpreter=%s "
        "dbops_env_file=%s dbops_app_container=%s dbops_health_url=%s\n"
        % (sys.executable, info["env_file"], info["app_container"], info["health_url"]))
    playbook = tmp_path / "switch.yml"
    playbook.write_text(PLAYBOOK)
    info.update(mode=request.param, inventory=str(inventory), playbook=str(playbook), original=text)
    return info


def run_playbook(lab, *extra):
    """(rc, recap {ok, changed, ...}, results of the last debug task or None, full output)."""
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", lab["inventory"], lab["playbook"],
           *extra]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=300, env=env)
    verbose_out = proc.stdout + proc.stderr
    start = proc.stdout.find("\n{\n") + 1 if not proc.stdout.startswith("{") else 0
    try:
        doc = json.loads(proc.stdout[start:])
    except ValueError:
        pytest.fail("no json output from ansible-playbook:\n" + verbose_out)
    results = None
    for task in doc["plays"][0]["tasks"]:
        if task["task"]["name"] == "Show the results":
            results = task["hosts"]["lab1"].get("msg")
    shown = []
    for task in doc["plays"][0]["tasks"]:
        if "Stage | Show the change" in task["task"]["name"]:
            shown = task["hosts"]["lab1"].get("update_env_changes") or []
    return proc.returncode, doc["stats"]["lab1"], dict(results or {}, shown=shown), verbose_out


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def backups(env_file):
    return sorted(p for p in Path(env_file).parent.iterdir()
                  if p.name.startswith(".env.") and p.name.endswith("~"))


def test_switch_database_with_roles(lab):
    env_file, app = lab["env_file"], lab["app_container"]
    password = lab["db_password"]
    before_sha = sha(env_file)
    before = inspect(app)
    assert http_get(lab["health_url"])[0] == 503  # incident: DB_NAME=qadhya is empty

    # 1. check + diff, most verbose: nothing changes, the DB_NAME line shows, the password never does
    rc, recap, results, out = run_playbook(lab, "--check", "--diff", "-vvv")
    assert rc == 0, out[-3000:]
    quote = '"' if lab["mode"] == "mounted" else ""
    assert "-DB_NAME={0}qadhya{0}".format(quote) in results["shown"]
    assert "+DB_NAME={0}moncabinet{0}".format(quote) in results["shown"]
    assert not [line for line in results["shown"] if "PASSWORD" in line]
    assert password not in out
    assert sha(env_file) == before_sha and backups(env_file) == []
    now = inspect(app)
    assert now["Id"] == before["Id"] and now["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert results["start"]["would"] == ("restarted" if lab["mode"] == "mounted" else "recreated")

    # 2. the real run
    rc, recap, results, out = run_playbook(lab, "--diff", "-vvv")
    assert rc == 0, out[-3000:]
    assert password not in out
    start = results["start"]
    expected_strategy = "restart" if lab["mode"] == "mounted" else "recreate"
    assert start["strategy"] == expected_strategy
    assert start["action"] == ("started" if lab["mode"] == "mounted" else "recreated")
    assert start["http_status"] == 200 and start["health_status"] == "healthy"
    assert start["health_body"] == {"status": "ok", "database": "moncabinet", "documents": 580}
    assert start["effective_env"] == {"DB_NAME": "moncabinet"}
    assert http_get(lab["health_url"]) == (200, {"status": "ok", "database": "moncabinet", "documents": 580})
    sys.stderr.write("\n%s mode: start -> 200 in %.3f s (%s)\n" % (lab["mode"], start["elapsed_s"],
                                                                  json.dumps(start["timings"])))

    # env file: only the DB_NAME value changed, quoting, comment, export, owner and mode kept
    text = Path(env_file).read_text(encoding="utf-8")
    assert text == lab["original"].replace("DB_NAME={0}qadhya{0}".format(quote),
                                           "DB_NAME={0}moncabinet{0}".format(quote))
    assert text.count("moncabinet") == lab["original"].count("moncabinet") + 1
    st = os.stat(env_file)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, OWNER, OWNER)
    found = backups(env_file)
    assert len(found) == 1 and found[0].read_text(encoding="utf-8") == lab["original"]
    assert results["env"]["backup_file"] == str(found[0])
    assert os.stat(found[0]).st_mode & 0o077 == 0  # the backup holds the password too

    after = inspect(app)
    if lab["mode"] == "created":
        assert after["Id"] != before["Id"]
        assert after["HostConfig"] == before["HostConfig"]
        assert after["Config"]["Labels"] == before["Config"]["Labels"]
    else:
        assert after["Id"] == before["Id"]

    # 3. rerun: nothing to do
    rc, recap, results, out = run_playbook(lab)
    assert rc == 0, out[-3000:]
    assert recap["changed"] == 0, out[-3000:]
    assert results["start"]["action"] == "none"
    assert inspect(app)["Id"] == after["Id"]
    assert len(backups(env_file)) == 1


@pytest.mark.parametrize("lab", ["created"], indirect=True)
def test_failed_start_reports_one_line(lab):
    """A start whose database does not exist fails with the health details, nothing secret."""
    env_file = lab["env_file"]
    rc, _recap, _results, out = run_playbook(
        lab, "-e", "target_db=nonexistent", "-e", "dbops_health_timeout=4")
    assert rc != 0
    assert lab["db_password"] not in out
    assert "not ready after 4s" in out and "nonexistent" in out
    assert "nonexistent" in Path(env_file).read_text(encoding="utf-8")
    app = inspect(lab["app_container"])
    if lab["mode"] == "created":
        # the old container is back under its name, stopped, still on the old env
        assert app["State"]["Running"] is False
        assert "DB_NAME=qadhya" in app["Config"]["Env"]
