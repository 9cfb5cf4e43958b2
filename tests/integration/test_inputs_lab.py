"""The dbops_* inputs are validated before a playbook changes anything, on the real lab.

A misspelt variable and a missing one are what a user hits first; each must
stop the playbook at its first task, naming the variable, with the lab
exactly as it was (databases, env file, app container, backups). Runs
against the session's lab instance (QADHYA_IT_INSTANCE) with real
ansible-playbook runs; the playbooks without the validation task yet are
skipped, and start running as soon as it is their first task.
"""

import json
import re
from pathlib import Path

import labkit
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
VALIDATE = "qadhya.dbops.validate_inputs"


def first_task(playbook):
    play = yaml.safe_load((PLAYBOOKS / playbook).read_text())[0]
    return (play.get("tasks") or [{}])[0]


def validated(playbook):
    # Every playbook validates first: one that stops doing so must fail here, not skip.
    assert VALIDATE in first_task(playbook), "%s does not start with %s" % (playbook, VALIDATE)
    return playbook


def state(lab, work):
    """Everything a run could change, to compare before and after."""
    backups = Path(work) / "backups"
    return {
        "databases": sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database")),
        "env_file": lab.env_file.read_bytes(),
        "app": lab.docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", lab.app).stdout.strip(),
        "backups": sorted(p.name for p in backups.iterdir()) if backups.exists() else [],
        "reports": sorted(str(p) for p in (Path(work) / "reports").rglob("*")),
    }


def run(playbook, hostvars, work, *args):
    inventory = labkit.write_inventory(Path(work) / "inventory.json", {"lab-it": hostvars})
    return labkit.run_playbook(PLAYBOOKS / playbook, inventory, *args)


def tasks_run(output):
    """Names of the tasks that ran, from the default callback's TASK lines."""
    return [line.split("[", 1)[1].rsplit("]", 1)[0] for line in output.splitlines()
            if line.startswith("TASK [")]


def assert_stopped_at_validation(proc, before, after, *lines):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    ran = tasks_run(proc.stdout)
    assert ran == ["Pre-check | Validate the dbops_* variables"], ran
    recap = re.search(r"lab-it\s+: ok=0\s+changed=0\s+unreachable=0\s+failed=1\s", proc.stdout)
    assert recap, proc.stdout[-2000:]
    for line in lines:
        assert line in out, (line, out[-3000:])
    assert after == before


@pytest.fixture
def work(tmp_path):
    return tmp_path


@pytest.mark.parametrize("playbook", ["backup.yml", "migrate.yml", validated("consolidate.yml"),
                                      validated("check.yml"), validated("restore.yml")])
def test_a_misspelt_variable_stops_the_run_naming_the_right_one(lab_instance, work, playbook):
    hostvars = labkit.host_vars(lab_instance.info, work)
    del hostvars["dbops_target_db"]
    hostvars["dbops_target_dbb"] = "mydata"
    before = state(lab_instance, work)
    proc = run(playbook, hostvars, work)
    lines = ["unknown variable dbops_target_dbb; did you mean dbops_target_db?"]
    if "dbops_target_db" in (first_task(playbook).get(VALIDATE) or {}).get("required", []):
        lines.append("dbops_target_db is required by %s but not set" % playbook)
    assert_stopped_at_validation(proc, before, state(lab_instance, work), *lines)


@pytest.mark.parametrize("playbook", ["backup.yml", "migrate.yml", validated("consolidate.yml"),
                                      validated("check.yml"), validated("restore.yml")])
def test_a_run_without_the_env_file_stops_naming_it(lab_instance, work, playbook):
    hostvars = labkit.host_vars(lab_instance.info, work)
    del hostvars["dbops_env_file"]
    before = state(lab_instance, work)
    proc = run(playbook, hostvars, work)
    assert_stopped_at_validation(proc, before, state(lab_instance, work),
                                 "dbops_env_file is required by %s but not set: set it in the inventory "
                                 "or with -e" % playbook)


def test_every_problem_is_named_at_once_extra_vars_included(lab_instance, work):
    """Inventory and -e values are judged together, one line each, in one run."""
    hostvars = labkit.host_vars(lab_instance.info, work)
    hostvars["dbops_db_container"] = ""
    before = state(lab_instance, work)
    proc = run("migrate.yml", hostvars, work, "-e", "dbops_backup_format=tarball",
                    "-e", "dbops_health_timeout=soon", "-e", json.dumps({"dbops_run": {}}))
    assert_stopped_at_validation(
        proc, before, state(lab_instance, work),
        "4 problems with the dbops_* variables, nothing was run:",
        "dbops_run is consolidate.yml's run record, set by the playbook itself, not an input",
        "dbops_backup_format must be one of custom, plain_gzip, plain_zstd, got 'tarball'",
        "dbops_health_timeout must be an int, got 'soon'",
        "dbops_db_container is required by migrate.yml but empty")


def test_valid_inputs_pass_and_the_run_goes_on(lab_instance, work):
    """Check mode, so the lab is left as it is: validation passes, the pre-check runs."""
    before = state(lab_instance, work)
    proc = run("backup.yml", labkit.host_vars(lab_instance.info, work), work, "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    ran = tasks_run(proc.stdout)
    assert ran[0] == "Pre-check | Validate the dbops_* variables" and len(ran) > 5, ran
    assert state(lab_instance, work)["databases"] == before["databases"]
    assert state(lab_instance, work)["env_file"] == before["env_file"]


def test_schedule_refuses_a_misspelt_setting(work):
    """schedule.yml has no required value, but a typo in -e must not be ignored."""
    proc = labkit.run_playbook(PLAYBOOKS / "schedule.yml", "localhost,", "-c", "local", "--check",
                               "-e", "dbops_schedule_cron_file=%s" % (work / "cron"),
                               "-e", "dbops_schedule_backup_tim=03:00")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "unknown variable dbops_schedule_backup_tim; did you mean dbops_schedule_backup_time?" \
        in proc.stdout + proc.stderr
    assert tasks_run(proc.stdout) == ["Pre-check | Validate the dbops_* variables"]
    assert not (work / "cron").exists()
