"""Role input is checked before any task runs, and the example inventories resolve.

No lab is needed: every role is included on localhost with one wrong-typed or
out-of-choice variable, and must fail on its "Validating arguments against
arg spec" task, naming the variable, with no other task of the role run; a
role left without the app's values (no app-specific defaults) fails the same
way, naming the dbops_* variable to set. Every example inventory (prod,
staging, dev with their example vault passwords, lab, lab-multi) passes each
playbook's input validation, and docs/roles.md is what docs/gen_roles.py
makes of the argument specs. Nothing here needs Docker, so these tests are
not marked `integration`; they run with the rest under tests/integration in
`make test`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import labkit
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# roles/inputs is the list of the dbops_* variables, not a role to run.
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())
PLAYBOOKS = ["backup.yml", "check.yml", "consolidate.yml", "dr_drill.yml", "migrate.yml", "restore.yml",
             "schedule.yml"]
VALIDATE = "qadhya.dbops.validate_inputs"
# Another app than the lab's: the values the roles cannot do without.
APP_VALUES = {"dbops_env_file": "/srv/shop/.env", "dbops_db_container": "shop-db",
              "dbops_app_container": "shop-web", "dbops_target_db": "shop"}
# Each role forwarding an app-specific dbops_* value with no fallback: the
# variable its validation must name when the inventory lacks it.
NO_APP_DEFAULT = {
    "apply_migration": "dbops_db_container",
    "detect_db": "dbops_db_container",
    "rename_db": "dbops_db_container",
    "restart_container": "dbops_app_container",
    "update_env": "dbops_env_file",
}

# One bad input per role: (variable, value, words the message must hold).
BAD_INPUT = {
    "apply_migration": ("apply_migration_action", "drop", "must be one of"),
    "backup": ("backup_format", "tarball", "must be one of"),
    "detect_db": ("detect_db_count", "maybe", "must be one of"),
    "rename_db": ("rename_db_drop_empty_target", "perhaps", "bool"),
    "restart_container": ("restart_container_action", "reboot", "must be one of"),
    "update_env": ("update_env_values", "notadict", "dict"),
}

# Where each environment's data must end: one environment, one database.
ENV_TARGETS = {"prod": "qadhya", "staging": "qadhya_staging", "dev": "qadhya_dev"}


def ansible_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0", **extra})
    return env


def role_specs(role):
    return yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]


def test_every_role_has_a_bad_input_case():
    assert ROLES, "no role found under roles/"
    assert sorted(BAD_INPUT) == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_cover_the_defaults(role):
    """Every public default is specified and described; every spec option exists."""
    options = role_specs(role)
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    public = {k for k in defaults if not k.startswith("__")}
    assert public <= set(options), f"{role}: defaults without a spec: {public - set(options)}"
    assert all(k.startswith(role + "_") for k in options), f"{role}: unprefixed option"
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("type"), f"{role}: {name} has no type"
    var, _value, _words = BAD_INPUT[role]
    assert var in options, f"{role}: the bad-input case names an unknown option {var}"


@pytest.mark.parametrize("role", ROLES)
def test_tasks_read_only_specified_variables(role):
    """A role variable the tasks read but the spec lacks is neither validated nor documented."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "roles" / role / "tasks").glob("*.yml")))
    read = set(re.findall(r"\b%s_[a-z0-9_]+" % role, text))
    # What the role sets itself: registered results and facts.
    produced = set(re.findall(r"register:\s*(%s_\w+)" % role, text))
    produced |= set(re.findall(r"^\s+(%s_\w+):" % role, text, re.M))
    assert read - produced <= set(role_specs(role)), sorted(read - produced - set(role_specs(role)))


def test_bad_role_input_is_rejected_before_any_task(tmp_path):
    """All roles at once, one host each, so the whole check takes one run."""
    marker = tmp_path / "marker"
    hosts = {}
    for role in ROLES:
        var, value, _words = BAD_INPUT[role]
        hosts[f"bad-{role}"] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                "bad_role": role, **APP_VALUES, var: value}
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    playbook = tmp_path / "bad_input.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Include each role with one bad input",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {"name": "Include the role under test",
             "ansible.builtin.include_role": {"name": "qadhya.dbops.{{ bad_role }}"}},
            # Reached only if the role accepted its input.
            {"name": "Mark that the role ran",
             "ansible.builtin.file": {"path": f"{marker}-{{{{ inventory_hostname }}}}", "state": "touch",
                                      "mode": "0600"},
             "delegate_to": "localhost"},
        ],
    }], sort_keys=False))

    proc = subprocess.run([BIN / "ansible-playbook", playbook, "-i", inventory], capture_output=True,
                          text=True, cwd=REPO, timeout=300, check=False,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"))
    assert proc.returncode != 0, proc.stdout[-3000:]
    result = json.loads(proc.stdout)
    stats = result["stats"]
    tasks = result["plays"][0]["tasks"]
    for role in ROLES:
        host = f"bad-{role}"
        var, value, words = BAD_INPUT[role]
        # Only the include and the validation ran on this host, and it failed there.
        ran = [t["task"]["name"] for t in tasks if host in t["hosts"]]
        assert len(ran) == 2, (role, ran)
        assert ran[0] == "Include the role under test"
        assert ran[1].startswith(f"qadhya.dbops.{role} : Validating arguments against arg spec 'main'"), \
            (role, ran)
        res = tasks[[t["task"]["name"] for t in tasks].index(ran[1])]["hosts"][host]
        assert res.get("failed") is True, (role, res)
        msg = res["msg"] if isinstance(res["msg"], str) else " ".join(res["msg"])
        errors = " ".join(res.get("argument_errors", [])) or msg
        assert var in errors and words in errors, (role, msg, errors)
        assert value in errors or words == "bool" or words == "dict", (role, errors)
        assert stats[host]["failures"] == 1 and stats[host]["changed"] == 0, (role, stats[host])
        assert not Path(f"{marker}-{host}").exists(), f"{role}: a task after the role ran"


def test_good_role_input_passes_validation(tmp_path):
    """The same roles with valid values get past validation (check mode on a
    role whose first task needs no server: the env file staging)."""
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_NAME=moncabinet\nDB_PASSWORD=x\n")
    env_file.chmod(0o600)
    proc = subprocess.run(
        [BIN / "ansible", "localhost", "-i", "localhost,", "-c", "local", "-e",
         f"ansible_python_interpreter={sys.executable}", "--check", "-m", "ansible.builtin.include_role",
         "-a", "name=qadhya.dbops.update_env", "-e",
         json.dumps({"update_env_file": str(env_file), "update_env_values": {"DB_NAME": "qadhya"},
                     "update_env_action": "stage"})],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False, env=ansible_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert env_file.read_text() == "DB_NAME=moncabinet\nDB_PASSWORD=x\n"


def test_roles_without_the_apps_values_name_the_variable_to_set(tmp_path):
    """No role falls back to this app's names: without the dbops_* value it stops, naming it."""
    hosts = {f"bare-{role}": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                              "bare_role": role} for role in NO_APP_DEFAULT}
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    playbook = tmp_path / "bare.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Include each role with no dbops_* variable", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Include the role under test",
                   "ansible.builtin.include_role": {"name": "qadhya.dbops.{{ bare_role }}"}}],
    }], sort_keys=False))
    proc = subprocess.run([BIN / "ansible-playbook", playbook, "-i", inventory], capture_output=True,
                          text=True, cwd=REPO, timeout=300, check=False,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"))
    assert proc.returncode != 0, proc.stdout[-3000:]
    result = json.loads(proc.stdout)
    validation = [t for t in result["plays"][0]["tasks"] if "Validating arguments" in t["task"]["name"]]
    for role, var in NO_APP_DEFAULT.items():
        host = f"bare-{role}"
        (res,) = [t["hosts"][host] for t in validation if host in t["hosts"]]
        assert res.get("failed") is True, (role, res)
        assert f"set {var} (or {role}_" in res["msg"], (role, res["msg"])
        assert result["stats"][host]["changed"] == 0


def required_by(playbook):
    """The dbops_* variables a playbook requires, from its first task."""
    first = (yaml.safe_load((REPO / "playbooks" / playbook).read_text())[0].get("tasks") or [{}])[0]
    assert VALIDATE in first, "%s does not start with %s" % (playbook, VALIDATE)
    return (first[VALIDATE] or {}).get("required", [])


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_every_playbook_validates_its_inputs_first(playbook):
    first = (yaml.safe_load((REPO / "playbooks" / playbook).read_text())[0].get("tasks") or [{}])[0]
    assert VALIDATE in first, first
    assert first["name"] == "Pre-check | Validate the dbops_* variables"


INVENTORIES = ["dev", "lab", "lab-multi", "prod", "staging"]


@pytest.mark.parametrize("env_name", INVENTORIES)
def test_example_inventory_sets_every_value_each_playbook_requires(env_name):
    """The validation itself, on every host of the inventory (it never connects to them)."""
    inv = REPO / "inventory" / env_name
    vault = ["--vault-password-file", inv / "vault-password.example.txt"] if env_name in ENV_TARGETS else []
    # One run for all playbooks: a failure names the variable, which is enough.
    required = sorted({name for playbook in PLAYBOOKS for name in required_by(playbook)})
    assert "dbops_target_db" in required and "dbops_migrations_dir" in required
    proc = subprocess.run(
        [BIN / "ansible", "all", "-i", inv, *vault, "-m", VALIDATE, "-a", json.dumps({"required": required})],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False, env=ansible_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_generated_test_inventories_set_every_value_each_playbook_requires():
    """Molecule scenarios and labkit write their own inventories; each sets what every playbook requires."""
    required = {name for playbook in PLAYBOOKS for name in required_by(playbook)}
    for molecule in sorted((REPO / "molecule").glob("*/molecule.yml")):
        inventory = yaml.safe_load(molecule.read_text())["provisioner"]["inventory"]
        names = set(inventory.get("group_vars", {}).get("all", {}))
        for host in inventory.get("host_vars", {}).values():
            names |= set(host)
        assert required <= names, (molecule.parent.name, sorted(required - names))
    info = {"env_file": "/srv/shop/.env", "db_container": "shop-db", "app_container": "shop-web",
            "health_url": "http://127.0.0.1:8080/health"}
    names = set(labkit.host_vars(info, "/srv/work"))
    assert required <= names, ("labkit.host_vars", sorted(required - names))


def test_roles_doc_is_generated_from_the_argument_specs():
    proc = subprocess.run([sys.executable, REPO / "docs" / "gen_roles.py", "--check"], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("env_name", sorted(ENV_TARGETS))
def test_example_inventory_resolves_with_its_example_vault(env_name):
    inv = REPO / "inventory" / env_name
    password_file = inv / "vault-password.example.txt"
    assert "example" in password_file.read_text()
    vault = (inv / "group_vars" / env_name / "vault.yml").read_text()
    assert vault.startswith("$ANSIBLE_VAULT;1.1;AES256"), "the example vault is encrypted"

    listed = subprocess.run([BIN / "ansible-inventory", "-i", inv, "--vault-password-file", password_file,
                             "--list"], capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                            env=ansible_env())
    assert listed.returncode == 0, listed.stderr
    assert "[WARNING]" not in listed.stderr, listed.stderr
    data = json.loads(listed.stdout)
    hosts = data[env_name]["hosts"]
    assert hosts and not data.get("ungrouped", {}).get("hosts"), data
    for host in hosts:
        hv = data["_meta"]["hostvars"][host]
        assert hv["dbops_target_db"] == ENV_TARGETS[env_name]
        assert hv["vault_dbops_db_password"].startswith("example-")
        for key in ("ansible_host", "dbops_env_file", "dbops_db_container", "dbops_app_container",
                    "dbops_health_url", "dbops_backup_dir", "dbops_report_dir"):
            assert hv.get(key), (host, key)

    # Templated as a play sees them: dbops_db_password comes out of the vault.
    # (debug runs on the controller; nothing connects to the example host.)
    shown = subprocess.run(
        [BIN / "ansible", env_name, "-i", inv, "--vault-password-file", password_file, "-m",
         "ansible.builtin.debug", "-a",
         "msg={{ [dbops_target_db, dbops_db_user, dbops_db_password, dbops_report_dir] }}"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        env=ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"))
    assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr
    for host, res in json.loads(shown.stdout)["plays"][0]["tasks"][0]["hosts"].items():
        target, user, password, report_dir = res["msg"]
        assert target == ENV_TARGETS[env_name], host
        assert user and "{{" not in user
        assert password.startswith("example-") and password.endswith("-not-real"), host
        assert report_dir.endswith(f"reports/{env_name}")

    # Without the vault password the inventory is not readable: the secret is really vaulted.
    locked = subprocess.run([BIN / "ansible-inventory", "-i", inv, "--list"], capture_output=True, text=True,
                            cwd=REPO, timeout=120, check=False, env=ansible_env())
    assert locked.returncode != 0 and "vault" in (locked.stderr + locked.stdout).lower()
