"""Refusals come first: what can be decided before anything changes is decided
in the pre-check, and a refused run leaves no backup, no restart, no journal
entry beyond its own record, and the lab exactly as it was."""

import json

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


def refused(case, expect, **overrides):
    """Run consolidate.yml with `overrides`; assert one line naming `expect`,
    and that nothing changed: no backup, the app not restarted, same data."""
    inst, work = case["inst"], case["work"]
    before = state(inst)
    inventory = write_inventory(work / "inventory.json", {"lab1": host_vars(inst.info, work, **overrides)})
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


def test_a_missing_app_container(case):
    message = refused(case, "app container qadhya-itpre-gone does not exist",
                      dbops_app_container="qadhya-itpre-gone")
    assert "nothing was changed" in message


def test_a_stopped_database_container_is_named(case):
    inst = case["inst"]
    docker("stop", inst.db)
    try:
        inventory = write_inventory(case["work"] / "inventory.json",
                                    {"lab1": host_vars(inst.info, case["work"])})
        proc = run_playbook("playbooks/consolidate.yml", inventory)
        assert proc.returncode != 0
        report = json.loads(sorted((case["work"] / "reports").glob("lab1-*.json"))[-1].read_text())
        assert report["result"] == "failed" and inst.db in report["message"], report["message"]
        assert not list((case["work"] / "backups").glob("*.dump"))
    finally:
        docker("start", inst.db)
        wait_for(lambda: docker("exec", inst.db, "pg_isready", "-q", check=False).returncode == 0, timeout=60)


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
