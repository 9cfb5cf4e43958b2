"""Dead components at the start, on a real lab instance of this module's own.

The Docker Engine answering nothing but errors (an Engine API proxy in front
of the real engine, given to the run as DOCKER_HOST: the real dockerd keeps
serving everybody else), a backup directory that cannot be written, a backup
volume too small: each consolidation must stop before the app is touched,
in one line naming the problem, with everything as it was; so must a volume
that another writer fills up while the backup is being dumped.
"""

import errno
import importlib.util
import json
import math
import subprocess
import time

import pytest
from faultkit import DockerFaultProxy, PathWatcher, blocked_databases, repoint, snapshot
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
                  databases=lab.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1"),
                  health=lab.health())
    proc = run_playbook(PLAYBOOK, inv, env=env)
    return proc, proc.stdout + proc.stderr, before


def assert_nothing_changed(lab, work, before, backup_dir=None):
    assert lab.env_file.read_bytes() == before["env"]
    assert snapshot(lab, SOURCE) == before["rows"]
    assert app_state(lab) == before["app"]  # never stopped, restarted nor recreated
    assert lab.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1") == before["databases"]
    assert blocked_databases(lab) == []
    assert lab.health() == before["health"]  # the same answer, from the same database
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


def fill(directory):
    """Another writer: fill the volume of `directory` to its last byte."""
    with open(directory / "filler", "wb") as handle:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_backup_volume_filled_up_during_the_dump_stops_the_run_before_the_app_stops(lab, tmp_path, mounts):
    # Room for the database and 1 MiB of margin when the pre-check asks; once the dump's
    # partial file appears, another writer takes every byte left. The app runs healthy on
    # its data (repointed), so that the switch would be the run's only change.
    repoint(lab, SOURCE)
    size = int(lab.psql("postgres", "SELECT pg_database_size('%s')" % SOURCE)[0][0])
    backups = mounts(tmp_path / "backups", "size=%dk,mode=0700" % ((size >> 10) + 4096))
    watcher = PathWatcher(backups, ".%s-*.partial-*" % SOURCE, lambda: fill(backups))
    try:
        proc, out, before = consolidate(lab, tmp_path, dbops_backup_dir=str(backups),
                                        dbops_backup_free_space_margin_mb=1)
    finally:
        watcher.close()
    assert watcher.fired.is_set() and watcher.error is None, watcher.error
    assert proc.returncode != 0, out[-4000:]
    reports = sorted((tmp_path / "reports").glob("lab1-*.json"))
    report = json.loads(reports[-1].read_text())
    message = report["message"]
    assert report["result"] == "failed" and "\n" not in message, message
    assert "disk full while writing the backup in %s" % backups in message, message
    assert "set dbops_backup_dir (backup_dir) to a volume with room" in message and message in out, message
    assert report.get("downtime_s") is None, report  # the app never stopped
    assert lab.health()[0] == 200 and lab.health()[1]["database"] == SOURCE
    assert lab.info["db_password"] not in out
    assert_nothing_changed(lab, tmp_path, before, backups)


def load_lab_module():
    spec = importlib.util.spec_from_file_location("qadhya_lab_for_sigterm", REPO / "lab" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_app_that_ignores_sigterm_waits_only_dbops_stop_timeout_at_each_stop(lab, tmp_path):
    # As Node does as PID 1 without an init: every `docker stop` waits its whole grace period, inside
    # the window. The lab's app, from an image whose process ignores SIGTERM, in the lab's own container.
    labmod = load_lab_module()
    image = "qadhya-lab/app:1-ignores-sigterm-it"
    ignore = ("import runpy, signal; _set = signal.signal; signal.signal = lambda s, h: "
              "_set(s, signal.SIG_IGN if s == signal.SIGTERM else h); runpy.run_path('/app/app.py', "
              "run_name='__main__')")
    subprocess.run(["docker", "build", "-q", "-t", image, "-"], check=True, capture_output=True, text=True,
                   input="FROM %s\nCMD %s\n" % (labmod.APP_IMAGE, json.dumps(["python3", "-c", ignore])))
    labmod.remove_container(lab.app)
    saved, labmod.APP_IMAGE = labmod.APP_IMAGE, image
    try:
        labmod.start_app(labmod.load_instance(lab.info["name"]))
    finally:
        labmod.APP_IMAGE = saved
    try:
        wait_for(lambda: lab.health()[0] == 200, timeout=60)
        started = time.monotonic()
        # From the incident: the repoint stops the app once, the switch once more.
        proc, out, _before = consolidate(lab, tmp_path, dbops_stop_timeout=1)
        took = time.monotonic() - started
        assert proc.returncode == 0, out[-4000:]
        report = json.loads(sorted((tmp_path / "reports").glob("lab1-*.json"))[-1].read_text())
        assert report["result"] == "success", report["message"]
        # Killed after 1 s, not 10: the window is that second and the start, and the run has no
        # two 10 s waits in it.
        assert report["downtime_s"] < 6, report["downtime_s"]
        assert took < 60, took
        status, body = lab.health()
        assert status == 200 and body["database"] == "qadhya"
    finally:
        lab.reset("--mode", "mounted")
