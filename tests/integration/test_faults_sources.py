"""Two candidate sources, on a real lab instance of this module's own.

Beside `moncabinet`, a full copy of it (`moncabinet_copy`, as a person makes
before trying something) holds the app's data too, and the app is configured
for neither (the incident: it names the empty `qadhya`). The run must not
guess: one line naming both and the variable that decides, nothing changed;
with `dbops_source_db` set, the named one is consolidated and the copy left
as it was.
"""

import json

import pytest
from faultkit import blocked_databases, snapshot
from labkit import REPO, docker, host_vars, instance_name, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fsources")
SOURCE, COPY, TARGET = "moncabinet", "moncabinet_copy", "qadhya"
CONSOLIDATE = REPO / "playbooks" / "consolidate.yml"


def databases(inst):
    rows = inst.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate")
    return sorted(row[0] for row in rows)


def app_state(inst):
    return docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", inst.app).stdout.strip()


def consolidate(work, inst, **extra):
    hosts = {"lab1": host_vars(inst.info, work, dbops_migrations_dir=str(work / "migrations"), **extra)}
    proc = run_playbook(CONSOLIDATE, write_inventory(work / "inventory.json", hosts))
    reports = sorted((work / "reports").glob("lab1-*.json"))
    assert reports, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads(reports[-1].read_text())


def test_two_databases_holding_data_are_refused_then_the_named_one_is_consolidated(module_lab, tmp_path):
    inst = module_lab
    inst.reset("--mode", "mounted")
    # Nobody is connected to moncabinet in the incident (the app uses qadhya): it can be a template.
    inst.psql("postgres", "CREATE DATABASE %s TEMPLATE %s" % (COPY, SOURCE))
    inst.psql(COPY, "DELETE FROM knowledge_base WHERE id IN (SELECT id FROM knowledge_base LIMIT 5)")
    (tmp_path / "migrations").mkdir()
    env_before, app_before, names_before = inst.env_file.read_bytes(), app_state(inst), databases(inst)
    rows, copy_rows = snapshot(inst, SOURCE), snapshot(inst, COPY)

    proc, report = consolidate(tmp_path, inst)
    message = report["message"]
    assert proc.returncode != 0 and report["result"] == "failed", message
    assert "\n" not in message and message in proc.stdout, message
    assert message.startswith("pre-check: several databases hold data: moncabinet (588 rows: "
                              "knowledge_base 580"), message
    assert "; moncabinet_copy (583 rows: knowledge_base 575" in message, message
    assert message.endswith("refusing to guess — set dbops_source_db to the one the app must use"), message
    assert report.get("downtime_s") is None and not report["changes"]
    assert inst.env_file.read_bytes() == env_before and app_state(inst) == app_before
    assert databases(inst) == names_before and blocked_databases(inst) == []
    assert snapshot(inst, SOURCE) == rows and snapshot(inst, COPY) == copy_rows
    assert not list((tmp_path / "backups").glob("*.dump"))
    journals = list((tmp_path / "backups" / "journal").glob("*.json"))
    assert [e["step"] for j in journals for e in json.loads(j.read_text())["entries"]] == []

    proc, report = consolidate(tmp_path, inst, dbops_source_db=SOURCE)
    assert proc.returncode == 0 and report["result"] == "success", report["message"]
    assert report["source"] == SOURCE and report["target"] == TARGET
    assert wait_for(lambda: inst.health()[0] == 200, timeout=30)
    assert inst.health()[1]["database"] == TARGET
    assert snapshot(inst, TARGET) == rows
    assert snapshot(inst, COPY) == copy_rows  # the other candidate untouched
    assert databases(inst) == sorted(["postgres", COPY, TARGET])
    assert blocked_databases(inst) == []
