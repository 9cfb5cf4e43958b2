"""The app's image tag moved or removed before a recreate, on a lab instance of this module's own.

The app's env is fixed at its creation (mode created), so the switch has to
recreate it. Its image tag is one of this instance's own (a tag of the lab's
image), so that moving or removing it touches nobody else's app. A recreate
must never start another image than the one that ran: the run refuses in its
pre-check, before the backup and long before the app stops, in one line, and
everything stays as it was.
"""

import importlib.util
import json

import pytest
from faultkit import blocked_databases, snapshot
from labkit import LAB_PY, REPO, docker, host_vars, instance_name, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fimage")
SOURCE = "moncabinet"
LAB_IMAGE = "qadhya-lab/app:1"
PRIVATE = "qadhya-lab/app:%s" % INSTANCE


def recreate_from_private_tag(lab):
    """The lab's recreate-app, with the app's image named by this instance's own tag."""
    spec = importlib.util.spec_from_file_location("qadhya_lab_cli", LAB_PY)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.APP_IMAGE = PRIVATE
    assert cli.main(["recreate-app", "--instance", lab.name, "--mode", "created"]) == 0


def app_state(lab):
    fmt = "{{.Id}} {{.State.StartedAt}} {{.State.Running}}"
    return docker("inspect", "--format", fmt, lab.app).stdout.strip()


@pytest.mark.parametrize("fault", ["moved", "removed"])
def test_a_recreate_never_starts_another_image_than_the_one_that_ran(module_lab, tmp_path, fault):
    lab = module_lab
    lab.reset("--mode", "created")
    lab.set_env("DB_NAME", SOURCE)  # repointed already: the switch is the only change
    docker("tag", LAB_IMAGE, PRIVATE)
    try:
        recreate_from_private_tag(lab)
        assert wait_for(lambda: lab.health()[0] == 200, timeout=30), lab.health()
        if fault == "moved":
            docker("tag", "qadhya-lab/postgres:15", PRIVATE)
        else:
            docker("rmi", PRIVATE)  # the tag only: the image stays, under the lab's own tag
        (tmp_path / "migrations").mkdir()
        inventory = write_inventory(tmp_path / "inventory.json", {"lab1": host_vars(
            lab.info, tmp_path, dbops_migrations_dir=str(tmp_path / "migrations"))})
        env_before, app_before, rows_before = lab.env_file.read_bytes(), app_state(lab), snapshot(lab, SOURCE)
        proc = run_playbook(REPO / "playbooks" / "consolidate.yml", inventory)
    finally:
        docker("rmi", PRIVATE, check=False)
    reports = sorted((tmp_path / "reports").glob("lab1-*.json"))
    assert reports, proc.stdout[-3000:]
    report = json.loads(reports[-1].read_text())
    message = report["message"]
    assert proc.returncode != 0 and report["result"] == "failed", message
    assert "\n" not in message and message in proc.stdout, message
    assert "refusing to recreate %s: its image %r" % (lab.app, PRIVATE) in message, message
    assert ("now points to another image than the one it runs" if fault == "moved" else "no longer exists") \
        in message, message
    assert message.endswith("— nothing was changed"), message
    # Refused by the pre-check: no backup taken, no step in the run's journal.
    backups = tmp_path / "backups"
    assert not list(backups.glob("*.dump")) and not list(backups.glob(".*")), list(backups.iterdir())
    journals = sorted((backups / "journal").glob("*.json"))
    assert journals and json.loads(journals[-1].read_text())["entries"] == [], journals
    assert report.get("downtime_s") is None, report  # the app never stopped
    assert app_state(lab) == app_before and lab.health()[0] == 200
    assert lab.env_file.read_bytes() == env_before
    assert snapshot(lab, SOURCE) == rows_before
    assert blocked_databases(lab) == []
