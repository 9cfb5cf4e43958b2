# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for app_container on a Docker Compose service: detection from labels,
the recreate command, the dry-run guard, and the sequence with a fake CLI."""

from __future__ import annotations

import copy

import pytest
from test_container import NEW_ID, OLD_ID, FakeAPI, inspect_doc, manager, params

from ansible_collections.qadhya.dbops.plugins.module_utils import _compose as cp
from ansible_collections.qadhya.dbops.plugins.module_utils import _container as ct

PROJECT_DIR = "/opt/moncabinet"


def compose_container(tmp_path, running=True, env_db="qadhya", oneoff="False"):
    info = inspect_doc(mounts=[], running=running, env_db=env_db)
    info["HostConfig"]["Binds"] = []
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text("services: {}\n")
    info["Config"]["Labels"] = {
        "com.docker.compose.project": "moncabinet",
        "com.docker.compose.service": "nextjs",
        "com.docker.compose.project.working_dir": str(tmp_path),
        "com.docker.compose.project.config_files": str(compose_file),
        "com.docker.compose.oneoff": oneoff,
    }
    return info


class FakeCLI:
    """docker compose: the dry run prints `dry_run_output`; `up` replaces the container."""

    def __init__(self, api, env_file, dry_run_output="", up_rc=0):
        self.api, self.env_file = api, env_file
        self.calls = []
        self.dry_run_output = dry_run_output
        self.up_rc = up_rc

    def __call__(self, argv):
        self.calls.append(argv)
        if argv[:2] == ["compose", "version"]:
            return 0, "2.26.1\n", ""
        if "--dry-run" in argv:
            return 0, "", self.dry_run_output
        if self.up_rc:
            return self.up_rc, "", "Error response from daemon: no space left on device"
        old = self.api.containers["qadhya-nextjs"]
        new = copy.deepcopy(old)
        new["Id"] = NEW_ID
        db_name = self.env_file.read_text().split("DB_NAME=")[1].split()[0]
        new["Config"]["Env"] = [e if not e.startswith("DB_NAME=") else "DB_NAME=" + db_name
                                for e in old["Config"]["Env"]]
        new["State"].update(Running=True, Status="running", Health={"Status": "healthy", "Log": []})
        self.api.containers["qadhya-nextjs"] = new
        return 0, "", " Container qadhya-nextjs  Recreated\n"


def setup(tmp_path, env_value="moncabinet  # the data", **kw):
    env_file = tmp_path / ".env"
    env_file.write_text('DB_NAME=%s\nAPP_TITLE="Qadhya #1"  # quoted\n' % env_value)
    api = FakeAPI([compose_container(tmp_path, **kw)])
    cli = FakeCLI(api, env_file)
    return api, cli, env_file


def run(api, cli, p, check_mode=False):
    m = manager(api, p, check_mode=check_mode)
    m.docker_cli = cli
    journal = []
    m.journal = lambda step, **details: journal.append((step, details))
    return m.run(), journal


def test_labels_name_the_service(tmp_path):
    service = cp.compose_service(compose_container(tmp_path))
    assert service == dict(project="moncabinet", service="nextjs", working_dir=str(tmp_path),
                           config_files=[str(tmp_path / "compose.yaml")])
    assert cp.compose_service(compose_container(tmp_path, oneoff="True")) is None
    assert cp.compose_service(inspect_doc()) is None


def test_recreate_argv_is_one_service_without_no_deps():
    service = dict(project="moncabinet", service="nextjs", working_dir=PROJECT_DIR,
                   config_files=[PROJECT_DIR + "/compose.yaml", PROJECT_DIR + "/compose.prod.yaml"])
    assert cp.compose_recreate_argv(service) == [
        "compose", "-p", "moncabinet", "-f", PROJECT_DIR + "/compose.yaml", "-f",
        PROJECT_DIR + "/compose.prod.yaml", "--project-directory", PROJECT_DIR,
        "up", "-d", "--force-recreate", "nextjs"]
    assert cp.compose_recreate_argv(service, dry_run=True)[-5:] == [
        "up", "--dry-run", "-d", "--force-recreate", "nextjs"]


def test_dry_run_parser_ignores_own_container():
    output = (" DRY-RUN MODE -  Container qadhya-postgres  Running\n"
              " DRY-RUN MODE -  Container qadhya-nextjs  Recreate\n"
              " DRY-RUN MODE -  Container b9b33ed9e3de_qadhya-nextjs  Starting\n")
    assert cp.compose_dry_run_others(output, "qadhya-nextjs") == []
    assert cp.compose_dry_run_others(output + " DRY-RUN MODE -  Container qadhya-postgres  Recreate\n",
                                     "qadhya-nextjs") == ["qadhya-postgres (recreate)"]


def test_compose_service_recreated_by_compose_and_journaled(tmp_path):
    api, cli, env_file = setup(tmp_path, running=False)
    result, journal = run(api, cli, params(env_file=str(env_file)))
    assert result["env_mode"] == "compose" and result["action"] == "recreated"
    assert result["container_id"] == NEW_ID and result["effective_env"] == {"DB_NAME": "moncabinet"}
    # stopped app: the stop made the dry run, the start goes straight to the recreate
    assert [argv[-1] for argv in cli.calls] == ["--short", "nextjs"]
    assert "--dry-run" not in cli.calls[-1]
    assert result["compose"]["cmd"][:2] == ["docker", "compose"]
    assert journal == [("app_recreate", dict(container="qadhya-nextjs", id=OLD_ID, action="recreated",
                                             was_running=False, env={"DB_NAME": "moncabinet"},
                                             compose="moncabinet/nextjs"))]
    # no rename/create of our own: Compose did it
    assert api.calls == []


def test_running_service_gets_a_dry_run_first(tmp_path):
    api, cli, env_file = setup(tmp_path, running=True)
    run(api, cli, params(env_file=str(env_file)))
    assert ["--dry-run" in argv for argv in cli.calls] == [False, True, False]


def test_pending_change_elsewhere_refused_before_any_change(tmp_path):
    api, cli, env_file = setup(tmp_path, running=True)
    cli.dry_run_output = " DRY-RUN MODE -  Container qadhya-postgres  Recreate\n"
    with pytest.raises(ct.ContainerError, match="would also touch qadhya-postgres"):
        run(api, cli, params(env_file=str(env_file)))
    with pytest.raises(ct.ContainerError, match="would also touch qadhya-postgres"):
        run(api, cli, params(state="stopped"))
    assert api.calls == [] and not any(argv[-1] == "nextjs" and "--dry-run" not in argv for argv in cli.calls)


def test_stop_of_a_compose_service_checks_then_stops(tmp_path):
    api, cli, _env_file = setup(tmp_path, running=True)
    result, journal = run(api, cli, params(state="stopped"))
    assert result["action"] == "stopped" and api.calls == [("stop", OLD_ID[:4])]
    assert any("--dry-run" in argv for argv in cli.calls) and journal[0][0] == "app_stop"


def test_env_file_not_holding_the_value_fails_before_any_change(tmp_path):
    api, cli, env_file = setup(tmp_path, env_value="qadhya")
    with pytest.raises(ct.ContainerError, match="read by Compose for service nextjs"):
        run(api, cli, params(env_file=str(env_file)))
    assert cli.calls == [] and api.calls == []


def test_check_mode_reports_and_does_nothing(tmp_path):
    api, cli, env_file = setup(tmp_path, running=True)
    result, journal = run(api, cli, params(env_file=str(env_file)), check_mode=True)
    assert result["would"] == "recreated" and result["env_mode"] == "compose"
    assert journal == [] and api.calls == [] and all("--dry-run" in a or "version" in a for a in cli.calls)


def test_compose_failure_is_one_line(tmp_path):
    api, cli, env_file = setup(tmp_path, running=False)
    cli.up_rc = 1
    with pytest.raises(ct.ContainerError, match="could not recreate service nextjs .*no space left"):
        run(api, cli, params(env_file=str(env_file)))


def test_missing_project_files_refused(tmp_path):
    api, cli, env_file = setup(tmp_path, running=False)
    (tmp_path / "compose.yaml").unlink()
    with pytest.raises(ct.ContainerError, match="not on the Docker host"):
        run(api, cli, params(env_file=str(env_file)))
    assert cli.calls == []


def test_already_right_is_no_change(tmp_path):
    api, cli, env_file = setup(tmp_path, env_db="moncabinet")
    result, journal = run(api, cli, params(env_file=str(env_file)))
    assert result["changed"] is False and result["env_mode"] == "compose"
    assert cli.calls == [] and journal == []
