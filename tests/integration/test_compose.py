"""A Compose-managed app (lab mode `compose`): consolidate.yml end to end.

The app and PostgreSQL are services of a Compose project whose directory
holds the `.env` (`env_file: .env`, read at creation). Compose's config hash
ignores the env file's content, so the app must be recreated by Compose,
that service only; afterwards it is still that service, runs on the new
DB_NAME, and a plain `docker compose up -d` in the project changes nothing.
One lab instance, one consolidation run and its rerun.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
INSTANCE = labkit.instance_name("itcompose")
COLLECTIONS = REPO / ".cache" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile  # noqa: E402

COMPOSE_LABELS = ("com.docker.compose.project", "com.docker.compose.service",
                  "com.docker.compose.project.working_dir", "com.docker.compose.project.config_files")


@pytest.fixture(scope="module")
def lab():
    if labkit.docker("compose", "version", check=False).returncode != 0:
        pytest.fail("docker compose (v2 plugin) is missing; .ci/bootstrap installs it")
    instance = labkit.lab_up(INSTANCE, "--mode", "compose")
    yield instance
    labkit.run_lab("down", "--instance", INSTANCE, check=False)


def inspect(name):
    return json.loads(labkit.docker("inspect", name).stdout)[0]


def config_env(info):
    return dict(item.split("=", 1) for item in info["Config"]["Env"])


def compose_up(lab):
    """What an operator types in the project directory afterwards."""
    return subprocess.run(["docker", "compose", "up", "-d"], cwd=Path(lab.info["compose_file"]).parent,
                          capture_output=True, text=True, check=True, timeout=120)


def test_env_file_read_the_way_compose_reads_it(lab):
    text = lab.env_file.read_text(encoding="utf-8")
    # the lab's compose .env has a quoted value and a ` # comment` after an unquoted one
    assert re.search(r'^APP_TITLE="[^"]*#1"  # quoted$', text, re.M)
    assert re.search(r"^DB_NAME=qadhya  # ", text, re.M)
    env = config_env(inspect(lab.app))
    assert env["DB_NAME"] == "qadhya"
    assert env["APP_TITLE"] == "Qadhya – Assistant juridique #1"
    parsed = envfile.parse(text)
    assert {key: env.get(key) for key in parsed} == parsed, "our parser reads .env as Compose does"
    assert lab.status()["env_db_name"] == "qadhya"


def test_consolidation_recreates_the_compose_service(lab, tmp_path):
    before = inspect(lab.app)
    db_before = inspect(lab.db)["Id"]
    labels = {key: before["Config"]["Labels"][key] for key in COMPOSE_LABELS}
    assert labels["com.docker.compose.service"] == "nextjs"
    inventory = labkit.write_inventory(tmp_path / "inventory.json",
                                       {"lab-it": labkit.host_vars(lab.info, tmp_path)})
    proc = labkit.run_playbook(PLAYBOOK, inventory)
    assert proc.returncode == 0, proc.stdout[-6000:]

    after = inspect(lab.app)
    assert after["Id"] != before["Id"], "the env is fixed at creation: Compose must recreate the service"
    assert {key: after["Config"]["Labels"][key] for key in COMPOSE_LABELS} == labels
    assert after["Config"]["Labels"]["com.docker.compose.depends_on"] == \
        before["Config"]["Labels"]["com.docker.compose.depends_on"]
    env = config_env(after)
    assert env["DB_NAME"] == "qadhya"
    assert env["APP_TITLE"] == "Qadhya – Assistant juridique #1"
    assert after["State"]["Health"]["Status"] == "healthy"
    status, body = lab.health()
    assert status == 200 and body["database"] == "qadhya" and body["documents"] == 580
    assert inspect(lab.db)["Id"] == db_before, "only the app service is recreated"
    text = lab.env_file.read_text(encoding="utf-8")
    assert envfile.parse(text)["DB_NAME"] == "qadhya"
    assert 'APP_TITLE="Qadhya – Assistant juridique #1"  # quoted' in text

    journals = sorted((tmp_path / "backups" / "journal").glob("*.json"))
    assert journals, "no undo journal written"
    steps = [entry for entry in json.loads(journals[-1].read_text())["entries"]
             if entry["step"] == "app_recreate"]
    assert steps and steps[-1]["compose"] == "%s/nextjs" % lab.info["compose_project"], steps
    assert steps[-1]["env"] == {"DB_NAME": "qadhya"}

    # Compose sees nothing to do: the same container, not even restarted.
    compose_up(lab)
    again = inspect(lab.app)
    assert (again["Id"], again["State"]["StartedAt"]) == (after["Id"], after["State"]["StartedAt"])

    rerun = labkit.run_playbook(PLAYBOOK, inventory)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert re.search(r"lab-it\s+: ok=\d+\s+changed=0\s", rerun.stdout), rerun.stdout[-4000:]
    assert inspect(lab.app)["Id"] == after["Id"]
