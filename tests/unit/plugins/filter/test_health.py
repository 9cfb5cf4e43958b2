# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for health_record: what check.yml observed, judged check by check."""

from __future__ import annotations

import copy
import json

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.filter.health import failed_checks, health_record

JOB = {"host": "db1", "kind": "check", "started_at": "2026-02-11T10:15:00.000000Z", "result": "ok",
       "checks": []}
NEWEST = {"name": "qadhya-20260211T090000Z.dump", "path": "/srv/backups/qadhya-20260211T090000Z.dump",
          "purpose": "scheduled", "database": "qadhya", "age_h": 1.2, "bytes": 2097152, "total_rows": 590,
          "verified": {"level": "structure", "ok": True}, "row_counts": {"users": 2}}
HEALTHY = {
    "env_file": "/srv/app/.env", "target_db": "qadhya", "backup_dir": "/srv/backups",
    "backup_dir_exists": True,
    "migrations_dir": "/srv/migrations", "app_container": "app", "health_url": "http://127.0.0.1:8080/health",
    "db_error": "", "migrations_error": "", "backup_error": "",
    "info": {"server_version": "15.10 (Debian)", "server_databases": ["postgres", "qadhya"],
             "configured_database": "qadhya", "configured_exists": True, "mismatch": False,
             "data_databases": ["qadhya"],
             "databases": {"qadhya": {"total_rows": 591, "size_bytes": 31457280, "missing_tables": [],
                                      "tables": {"users": {"rows": 2}, "knowledge_base": {"rows": 589}}}}},
    "plan": {"state": "nothing_to_do"},
    "migrations": {"pending": [], "already_applied": ["a.sql", "b.sql"]},
    "backups": {"newest": NEWEST, "backups": [NEWEST]},
    "verify": {"verified": {"level": "checksum", "ok": True}},
    "app_inspect": {"rc": 0, "stdout": json.dumps({"Running": True, "Status": "running",
                                                   "Health": {"Status": "healthy"}})},
    "http": {"status": 200, "json": {"status": "ok", "database": "qadhya"}},
    "df": {"rc": 0, "stdout_lines": ["Filesystem 1024-blocks Used Available Capacity Mounted",
                                     "/dev/sda1 100000000 50000000 10485760 50% /"]},
    "settings": {"backup_max_age_hours": "26", "backup_min_rows_ratio": "0.5", "min_free_mb": "1024",
                 "free_space_margin_mb": "256"},
}


def judge(**changes):
    observed = copy.deepcopy(HEALTHY)
    for key, value in changes.items():
        observed[key] = value
    record = health_record(dict(JOB), observed)
    return record, {c["check"]: c for c in record["checks"]}


def test_a_healthy_host_is_ok_with_every_check_in_order():
    record, checks = judge()
    assert record["result"] == "ok"
    assert [c["check"] for c in record["checks"]] == [
        "database", "configuration", "migrations", "backup", "app", "health_url", "disk"]
    assert checks["database"]["detail"] == "PostgreSQL 15.10, databases postgres, qadhya"
    assert checks["backup"]["detail"] == (
        "qadhya-20260211T090000Z.dump (scheduled), 1.2 h old (max 26.0), 2.0 MiB, 590 rows (live 591), "
        "verified structure, re-checked checksum ok")
    assert checks["disk"]["detail"] == (
        "10240 MiB free in /srv/backups (next backup needs 286 MiB, warning below 1024)")
    assert "row_counts" not in record["newest_backup"]
    assert record["database"] == {"name": "qadhya", "size_bytes": 31457280, "total_rows": 591,
                                  "tables": {"knowledge_base": 589, "users": 2}}
    assert record["host"] == "db1" and record["started_at"] == JOB["started_at"]


def test_the_incident_is_critical_for_the_right_reasons():
    info = copy.deepcopy(HEALTHY["info"])
    info.update(mismatch=True, summary="data in 'moncabinet'; app configured for 'qadhya' which is empty "
                "— they disagree", data_databases=["moncabinet"])
    record, checks = judge(info=info, backups={"newest": {}, "backups": []},
                           migrations={"pending": ["20260213_x.sql"]},
                           http={"status": 503, "json": {"error": "database empty"}})
    assert record["result"] == "critical" and record["mismatch"] is True
    assert checks["configuration"]["status"] == "critical"
    assert "they disagree" in checks["configuration"]["detail"]
    assert checks["migrations"] == {"check": "migrations", "status": "warning",
                                    "detail": "1 pending: 20260213_x.sql (run migrate.yml)"}
    assert checks["backup"]["detail"].startswith("no verified backup of qadhya in /srv/backups (0 listed")
    assert checks["health_url"]["detail"] == "http://127.0.0.1:8080/health answered 503: database empty"
    assert record["pending_migrations"] == ["20260213_x.sql"]
    assert failed_checks(record).startswith("configuration: data in 'moncabinet'")


def test_a_backup_with_far_fewer_rows_is_critical():
    backups = {"newest": dict(NEWEST, total_rows=0), "backups": [NEWEST]}
    _record, checks = judge(backups=backups)
    assert checks["backup"]["status"] == "critical"
    assert "holds 0 rows but qadhya holds 591 (below 0.5 of it)" in checks["backup"]["detail"]


def test_an_old_backup_is_a_warning():
    _record, checks = judge(backups={"newest": dict(NEWEST, age_h=30.5), "backups": [NEWEST]})
    assert checks["backup"]["status"] == "warning"


def test_an_unreadable_server_is_one_critical_and_nothing_judged_on_it():
    record, checks = judge(db_error="could not connect to server\nDETAIL: more", info={"failed": True})
    assert checks["database"] == {"check": "database", "status": "critical",
                                  "detail": "could not connect to server"}
    assert set(checks) == {"database", "app", "health_url", "disk"}
    assert record["configured_database"] == ""


def test_failed_steps_keep_their_reason():
    _record, checks = judge(backup_error="sha256 mismatch for x.dump", migrations_error="lock timeout")
    assert checks["backup"] == {"check": "backup", "status": "critical",
                                "detail": "sha256 mismatch for x.dump"}
    assert checks["migrations"]["status"] == "warning" and checks["migrations"]["detail"] == "lock timeout"


def test_app_unhealthy_missing_and_starting():
    state = {"Running": True, "Status": "running",
             "Health": {"Status": "unhealthy", "Log": [{"Output": "curl: (7) refused\n"}]}}
    _record, checks = judge(app_inspect={"rc": 0, "stdout": json.dumps(state)})
    assert checks["app"] == {"check": "app", "status": "critical",
                             "detail": "app running, health unhealthy, last check: curl: (7) refused"}
    _record, checks = judge(app_inspect={"rc": 1, "stdout": ""})
    assert checks["app"]["detail"] == "container app not found"
    state["Health"] = {"Status": "starting"}
    _record, checks = judge(app_inspect={"rc": 0, "stdout": json.dumps(state)})
    assert checks["app"]["status"] == "warning"


def test_disk_nothing_answers_and_no_room():
    _record, checks = judge(http={"status": -1, "msg": "Connection refused"},
                            df={"rc": 0, "stdout_lines": ["h", "/dev/sda1 1 1 102400 99% /"]})
    assert checks["health_url"]["detail"].endswith("answered nothing (Connection refused)")
    assert checks["disk"]["status"] == "critical"
    record, checks = judge(df={"rc": 1, "stderr": "df: /x: No such file"})
    assert checks["disk"]["detail"] == "cannot measure: df: /x: No such file" and record["free_mb"] == -1


def test_wrong_input_is_refused():
    with pytest.raises(AnsibleFilterError):
        health_record("not a job", {})


def copy_of(name, age_s=600.0, **extra):
    return dict({"name": name, "url": "s3://bk/qadhya/" + name, "bytes": 2097152, "verified": True,
                 "ok": True, "age_s": age_s}, **extra)


def test_the_offsite_copy_of_the_newest_backup_is_ok_an_older_one_a_warning():
    listing = {"copies": [copy_of(NEWEST["name"]), copy_of("qadhya-old.dump", 90000.0)]}
    record, checks = judge(offsite=listing, offsite_bucket="bk")
    assert checks["offsite"] == {"check": "offsite", "status": "ok",
                                 "detail": "s3://bk/qadhya/%s, 0.2 h old, 2.0 MiB, verified" % NEWEST["name"]}
    assert record["offsite_copy"]["of_newest_backup"] is True and record["offsite_copy"]["age_s"] == 600.0
    _record, checks = judge(offsite={"copies": [copy_of("qadhya-old.dump", 90000.0)]}, offsite_bucket="bk")
    assert checks["offsite"]["status"] == "warning" and "is not in the bucket" in checks["offsite"]["detail"]


def test_no_copy_or_an_unreachable_bucket_is_critical_and_no_bucket_no_check():
    _record, checks = judge(offsite={"copies": [copy_of("x.dump", verified=False)]}, offsite_bucket="bk")
    assert checks["offsite"]["status"] == "critical"
    assert "no verified copy in s3://bk" in checks["offsite"]["detail"]
    failed = {"failed": True, "msg": "bucket bk does not exist\nmore"}
    _record, checks = judge(offsite=failed, offsite_bucket="bk")
    assert checks["offsite"]["detail"] == "cannot list s3://bk: bucket bk does not exist"
    record, checks = judge()
    assert "offsite" not in checks and record["offsite_copy"] == {}
