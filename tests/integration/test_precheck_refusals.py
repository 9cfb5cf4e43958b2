"""Refusals come first: what can be decided before anything changes is decided
in the pre-check, and a refused run leaves no backup, no restart, no journal
entry beyond its own record, and the lab exactly as it was."""

import contextlib
import json
import subprocess

import pytest
from faultkit import snapshot
from labkit import docker, host_vars, instance_name, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("itpre")


@pytest.fixture
def case(module_lab, tmp_path):
    lab = module_lab
    lab.reset("--mode", "mounted")
    wait_for(lambda: lab.health()[0] is not None, timeout=30)
    return dict(inst=lab, work=tmp_path)


def state(inst):
    started = docker("inspect", "--format", "{{.State.StartedAt}}", inst.app, check=False).stdout.strip()
    return dict(env=inst.env_file.read_bytes(), rows=snapshot(inst, "moncabinet"), started=started,
                databases=sorted(r[0] for r in inst.psql("postgres", "SELECT datname FROM pg_database")))


def refused(case, expect, fault=contextlib.nullcontext, **overrides):
    """Run consolidate.yml with `overrides` while `fault()` (a context manager)
    holds; assert one line naming `expect`, and that, the fault healed, nothing
    changed: no backup, the app not restarted, same data."""
    inst, work = case["inst"], case["work"]
    before = state(inst)
    inventory = write_inventory(work / "inventory.json", {"lab1": host_vars(inst.info, work, **overrides)})
    with fault():
        proc = run_playbook(case.get("playbook", "playbooks/consolidate.yml"), inventory)
    assert proc.returncode != 0
    reports = sorted((work / "reports").glob("lab1-*.json"))
    message = json.loads(reports[-1].read_text())["message"] if reports else proc.stdout
    assert expect in message, message[-2000:]
    backups = [p.name for p in (work / "backups").glob("*") if p.name != "journal"] \
        if (work / "backups").exists() else []
    assert backups == [], backups
    assert state(inst) == before
    return message


def test_a_target_name_longer_than_postgres_allows(case):
    message = refused(case, "at most 63 bytes", dbops_target_db="q" * 40 + "é" * 12)
    assert "\n" not in message


def test_a_source_database_that_does_not_exist(case):
    message = refused(case, "source database 'moncabinet_old' does not exist (existing: ",
                      dbops_source_db="moncabinet_old")
    assert "fix dbops_source_db" in message and "\n" not in message, message


def test_a_missing_app_container(case):
    message = refused(case, "app container qadhya-itpre-gone does not exist; fix dbops_app_container and "
                            "rerun — nothing was changed", dbops_app_container="qadhya-itpre-gone")
    assert "\n" not in message, message


def test_a_health_url_that_can_never_answer_200(case):
    # A typo in the path: the app answers 404, and would until the switch's health wait ran out.
    url = case["inst"].health_url.rsplit("/", 1)[0] + "/healthz-typo"
    message = refused(case, "%s answered HTTP 404: it is not the app's health URL" % url,
                      dbops_health_url=url)
    assert message.endswith("fix dbops_health_url and rerun — nothing was changed"), message
    assert "\n" not in message, message


@contextlib.contextmanager
def stopped(inst, container):
    docker("stop", "-t", "5", container)
    try:
        yield
    finally:
        docker("start", container)
        wait_for(lambda: docker("exec", inst.db, "pg_isready", "-q", check=False).returncode == 0, timeout=60)


@contextlib.contextmanager
def paused(container):
    docker("pause", container)
    try:
        yield
    finally:
        docker("unpause", container)


def test_a_stopped_database_container_is_named(case):
    # The first to reach it, detect_db, names it.
    inst = case["inst"]
    message = refused(case, "container '%s' is not running (exited); start it (docker start %s)"
                      % (inst.db, inst.db), fault=lambda: stopped(inst, inst.db))
    assert "\n" not in message, message


def test_a_paused_database_container_is_named(case):
    # Frozen, it still counts as running; a connection to it would hang until a timeout.
    inst = case["inst"]
    message = refused(case, "container '%s' is paused; unpause it (docker unpause %s)" % (inst.db, inst.db),
                      fault=lambda: paused(inst.db))
    assert "\n" not in message, message


def test_a_paused_app_container_is_refused_naming_the_fix(case):
    # Frozen, it answers nobody: its health probe would time out and its stop wait on it.
    inst = case["inst"]
    message = refused(case, "app container %s is paused; unpause it (docker unpause %s) and rerun — nothing "
                            "was changed" % (inst.app, inst.app), fault=lambda: paused(inst.app))
    assert "\n" not in message, message


def test_the_env_files_own_password_is_wrong_while_the_vault_is_right(case):
    inst = case["inst"]
    inst.set_env("DB_PASSWORD", "not-the-password")
    message = refused(case, "the app's credentials in", dbops_db_user=inst.info["db_user"],
                      dbops_db_password=inst.info["db_password"])
    assert "not-the-password" not in message and inst.info["db_password"] not in message


def test_a_broken_migration_is_refused_before_the_backup(case, tmp_path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_ok.sql").write_text("CREATE TABLE t_ok (id int);\n")
    (migrations / "002_broken.sql").write_text("CREATE TABLE t_broken (id int;\n")
    message = refused(case, "002_broken.sql", dbops_migrations_dir=str(migrations))
    assert "t_ok" not in [r[0] for r in case["inst"].psql("moncabinet", "SELECT tablename FROM pg_tables")]
    assert "syntax error" in message


def journal_steps(backup_dir):
    """The steps recorded by every journal in `backup_dir`."""
    journals = sorted((backup_dir / "journal").glob("*.json"))
    assert journals, "the run opened no journal in %s" % backup_dir
    return [entry.get("step") for path in journals for entry in json.loads(path.read_text())["entries"]]


# A server initialised in LATIN1: the maintenance database the rename runs
# from has no "€" (the rename would fail with the app stopped), and it converts
# "é" to the LATIN1 byte 0xe9, which the app's UTF-8 DB_NAME never matches at
# login. lab.reset() restores the cluster.
@pytest.mark.parametrize("name", ["qadhya_€", "qadhya_é"], ids=["not-encodable", "encoded-otherwise"])
def test_a_name_the_servers_encoding_cannot_store_as_sent(case, name):
    inst = case["inst"]
    health = inst.health()[0]
    inst.psql("template1", "DROP DATABASE postgres")
    inst.psql("template1", "CREATE DATABASE postgres ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                           "TEMPLATE template0")
    message = refused(case, "dbops_target_db '%s' is not ASCII, and the server stores database names in "
                            "LATIN1 (the encoding of postgres, the maintenance database)" % name,
                      dbops_target_db=name)
    assert "\n" not in message and "choose an ASCII name" in message, message
    assert journal_steps(case["work"] / "backups") == [], journal_steps(case["work"] / "backups")
    # The app answers as before, on the same database (state() compared its start time and the data).
    assert inst.health()[0] == health


@pytest.fixture
def full_volume(case):
    point = case["work"] / "small-volume"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(point)], check=True)
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_backup_volume_without_room(case, full_volume):
    # 8 MB where the backup needs the database's size and a 256 MB margin.
    health = case["inst"].health()[0]
    message = refused(case, "not enough free space in %s" % full_volume, dbops_backup_dir=str(full_volume))
    assert message.endswith("set dbops_backup_dir to a volume with room — nothing was changed"), message
    assert "\n" not in message
    # Nothing but the run's own journal on the volume, and no step in it.
    assert [p.name for p in full_volume.iterdir()] == ["journal"]
    assert journal_steps(full_volume) == [], journal_steps(full_volume)
    assert case["inst"].health()[0] == health
