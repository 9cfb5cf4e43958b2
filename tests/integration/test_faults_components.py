"""Dead components at the start, on a real lab instance of this module's own.

The Docker Engine answering nothing but errors (an Engine API proxy in front
of the real engine, given to the run as DOCKER_HOST: the real dockerd keeps
serving everybody else), a backup directory that cannot be written, a backup
volume too small: each consolidation must stop before the app is touched,
in one line naming the problem, with everything as it was.
"""

import json
import math
import subprocess

import pytest
from faultkit import DockerFaultProxy, blocked_databases, snapshot
from labkit import REPO, docker, host_vars, instance_name, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fcomp")
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
SOURCE = "moncabinet"


@pytest.fixture
def lab(module_lab):
    module_lab.reset("--mode", "mounted")
    wait_for(lambda: module_lab.health()[0] is not None, timeout=60)
    yield module_lab


@pytest.fixture
def mounts():
    points = []

    def mount(point, options):
        point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def app_state(lab):
    fmt = "{{.Id}} {{.State.Status}} {{.State.StartedAt}}"
    return docker("inspect", "--format", fmt, lab.app).stdout.strip()


def consolidate(lab, work, env=None, **extra):
    (work / "migrations").mkdir(exist_ok=True)
    inv = write_inventory(work / "inventory.json", {"lab1": host_vars(
        lab.info, work, dbops_migrations_dir=str(work / "migrations"), **extra)})
    before = dict(env=lab.env_file.read_bytes(), rows=snapshot(lab, SOURCE), app=app_state(lab),
                  databases=lab.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1"))
    proc = run_playbook(PLAYBOOK, inv, env=env)
    return proc, proc.stdout + proc.stderr, before


def assert_nothing_changed(lab, work, before, backup_dir=None):
    assert lab.env_file.read_bytes() == before["env"]
    assert snapshot(lab, SOURCE) == before["rows"]
    assert app_state(lab) == before["app"]  # never stopped, restarted nor recreated
    assert lab.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1") == before["databases"]
    assert blocked_databases(lab) == []
    backups = backup_dir or work / "backups"
    assert not list(backups.glob("*.dump")) and not list(backups.glob(".*partial*"))


def test_the_engine_answering_only_errors_stops_the_run_before_anything(lab, tmp_path):
    proxy = DockerFaultProxy(tmp_path / "docker.sock", "*", "", times=math.inf)
    try:
        proc, out, before = consolidate(lab, tmp_path, env={"DOCKER_HOST": proxy.url})
    finally:
        proxy.close()
    assert proxy.hits, "the run never asked the engine"
    assert proc.returncode != 0, out[-4000:]
    assert "injected fault" in out or "Docker" in out, out[-4000:]
    reports = sorted((tmp_path / "reports").glob("lab1-*.json"))
    if reports:
        report = json.loads(reports[-1].read_text())
        assert report["result"] == "failed" and "\n" not in report["message"], report["message"]
    assert lab.info["db_password"] not in out
    assert_nothing_changed(lab, tmp_path, before)


def test_a_backup_directory_that_cannot_be_written_is_refused(lab, tmp_path, mounts):
    backups = mounts(tmp_path / "backups", "ro,size=4m,mode=0700")
    proc, out, before = consolidate(lab, tmp_path, dbops_backup_dir=str(backups))
    assert proc.returncode != 0, out[-4000:]
    assert str(backups) in out and ("Read-only" in out or "read-only" in out), out[-4000:]
    assert lab.info["db_password"] not in out
    assert_nothing_changed(lab, tmp_path, before, backups)


def test_a_backup_volume_too_small_is_refused_before_the_dump(lab, tmp_path, mounts):
    backups = mounts(tmp_path / "backups", "size=8m,mode=0700")
    proc, out, before = consolidate(lab, tmp_path, dbops_backup_dir=str(backups))
    assert proc.returncode != 0, out[-4000:]
    assert "not enough free space in %s" % backups in out, out[-4000:]
    reports = sorted((tmp_path / "reports").glob("lab1-*.json"))
    assert reports and json.loads(reports[-1].read_text())["result"] == "failed"
    assert_nothing_changed(lab, tmp_path, before, backups)
