# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qadhya.dbops.db_info through real `ansible` against a lab instance."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psycopg2
import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WEIRD = 'we"ird; DROP DATABASE x;--é'
VOLATILE = ("elapsed_ms", "connections", "size_bytes")


def run_module(module, args, check=False, verbose=False):
    return labkit.run_module(module, args, check=check, verbose=verbose)


def container_ip(name):
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        capture_output=True, text=True, check=True).stdout.split()
    return out[0]


def pg(lab, dbname="postgres"):
    conn = psycopg2.connect(host=container_ip(lab.db), user=lab.info["db_user"], dbname=dbname,
                            password=lab.info["db_password"], connect_timeout=5,
                            application_name="it-test")
    conn.autocommit = True
    return conn




def stable(result):
    """The result without values that legitimately move between runs."""
    out = json.loads(json.dumps(result))
    for key in ("elapsed_ms", "invocation", "changed", "failed"):
        out.pop(key, None)
    for info in out.get("databases", {}).values():
        for key in VOLATILE:
            info.pop(key, None)
    return out


def test_incident_is_diagnosed(lab_instance):
    lab = lab_instance
    args = lab.login_args(env_file=str(lab.env_file), expected_tables=["user_validation_stats"],
                     data_tables=["knowledge_base"])
    checked, _ = run_module("db_info", args, check=True)
    assert checked["changed"] is False
    started = time.monotonic()
    result, _ = run_module("db_info", args)
    wall = time.monotonic() - started
    assert result["changed"] is False

    mon = result["databases"]["moncabinet"]
    assert {k: v["rows"] for k, v in mon["tables"].items()} == {
        "knowledge_base": 580, "users": 2, "web_sources": 6, "ai_usage_logs": 0, "_migrations": 0}
    assert {v["method"] for v in mon["tables"].values()} == {"exact"}
    assert mon["total_rows"] == 588 and mon["has_data"] is True
    assert mon["missing_tables"] == ["user_validation_stats"]
    assert mon["migrations"] == {"table_exists": True, "count": 0, "rows": []}
    assert mon["encoding"] == "UTF8" and mon["owner"] == "moncabinet"
    assert mon["size_bytes"] > 10_000_000 and mon["allow_connections"] is True

    qad = result["databases"]["qadhya"]
    assert {k: v["rows"] for k, v in qad["tables"].items()} == {
        "knowledge_base": 0, "ai_usage_logs": 0, "_migrations": 0}
    assert qad["has_data"] is False and qad["total_rows"] == 0

    assert result["data_databases"] == ["moncabinet"]
    assert result["configured_database"] == "qadhya"
    assert result["configured_exists"] is True
    assert result["mismatch"] is True
    assert result["summary"].startswith(
        "data in 'moncabinet' (580 rows in knowledge_base, 6 in web_sources, 2 in users); "
        "app configured for 'qadhya' which is empty — they disagree")
    assert result["env"]["DB_NAME"] == "qadhya" and result["env"]["DB_HOST"] == "postgres"
    assert "DB_PASSWORD" not in result["env"] and result["env_secret_keys"] == ["DB_PASSWORD"]
    assert lab.info["db_password"] not in json.dumps(result)
    assert result["server_version"].startswith("15.")
    # read-only: a rerun sees exactly the same thing
    again, _ = run_module("db_info", args)
    assert again["changed"] is False and stable(again) == stable(result)
    assert stable(checked) == stable(result)
    print("\ndb_info on the lab: module %d ms, ansible wall %.2f s" % (result["elapsed_ms"], wall))


def test_the_app_container_and_the_backup_room_in_the_same_call(lab_instance, tmp_path):
    lab = lab_instance
    args = lab.login_args(env_file=str(lab.env_file), app_container=lab.app,
                          backup_dir=str(tmp_path / "not-yet" / "backups"))
    result, _ = run_module("db_info", args)
    assert result["db_address"] == container_ip(lab.db)
    app = result["app_container"]
    assert app["name"] == lab.app and app["exists"] is True
    assert app["status"] == "running" and app["running"] is True and app["compose_project"] == ""
    # What the container took at creation, read from Docker, not from the env file.
    created = subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", lab.app],
                             capture_output=True, text=True, check=True).stdout
    names = [item.split("=", 1)[1] for item in json.loads(created) if item.startswith("DB_NAME=")]
    assert app["env_at_creation"] == (names[-1] if names else None)
    assert lab.info["db_password"] not in json.dumps(result)
    # A directory to be created reports the free space of the volume it will be on.
    room = result["backup_dir"]
    assert room["path"] == str(tmp_path / "not-yet" / "backups") and not (tmp_path / "not-yet").exists()
    free = os.statvfs(tmp_path)
    assert abs(room["free_bytes"] - free.f_bavail * free.f_frsize) < 256 * 1024 * 1024
    gone, _ = run_module("db_info", dict(args, app_container=lab.app + "-gone"))
    assert gone["app_container"] == {"name": lab.app + "-gone", "exists": False}


def test_estimate_and_auto(lab_instance):
    lab = lab_instance
    with pg(lab, "moncabinet") as conn, conn.cursor() as cur:
        cur.execute("ANALYZE")  # statistics only; the estimate needs them
    est, _ = run_module("db_info", lab.login_args(databases=["moncabinet"], count="estimate"), check=True)
    tables = est["databases"]["moncabinet"]["tables"]
    assert tables["knowledge_base"] == {"rows": 580, "method": "estimate"}
    assert {v["method"] for v in tables.values()} == {"estimate"}
    assert list(est["databases"]) == ["moncabinet"]
    auto, _ = run_module("db_info", lab.login_args(databases=["moncabinet"], count="auto",
                                              exact_max_rows=100))
    tables = auto["databases"]["moncabinet"]["tables"]
    assert tables["knowledge_base"]["method"] == "estimate"
    assert tables["users"] == {"rows": 2, "method": "exact"}


def test_checksum_stable_then_changes(incident_lab):
    lab = incident_lab
    args = lab.login_args(databases=["moncabinet"], checksum_tables=["knowledge_base", "public.users"])
    first, _ = run_module("db_info", args, check=True)
    second, _ = run_module("db_info", args)
    sums1 = first["databases"]["moncabinet"]["checksums"]
    sums2 = second["databases"]["moncabinet"]["checksums"]
    assert sums1 == sums2
    assert sums1["knowledge_base"]["rows"] == 580 and sums1["users"]["rows"] == 2
    with pg(lab, "moncabinet") as conn, conn.cursor() as cur:
        cur.execute("UPDATE knowledge_base SET title = title || '.' "
                    "WHERE id = (SELECT min(id) FROM knowledge_base)")
    third, _ = run_module("db_info", args)
    sums3 = third["databases"]["moncabinet"]["checksums"]
    assert sums3["knowledge_base"]["rows"] == 580
    assert sums3["knowledge_base"]["checksum"] != sums1["knowledge_base"]["checksum"]
    assert sums3["users"] == sums1["users"]


def test_weird_database_name_listed_and_counted(lab_instance):
    lab = lab_instance
    conn = pg(lab)
    try:
        with conn.cursor() as cur:
            cur.execute('CREATE DATABASE x')  # would vanish if the name were ever executed
            cur.execute('CREATE DATABASE "we""ird; DROP DATABASE x;--é"')
        with pg(lab, WEIRD) as wconn, wconn.cursor() as cur:
            cur.execute('CREATE SCHEMA "sch.ema"; CREATE TABLE "sch.ema"."t; --" (v text);'
                        "INSERT INTO \"sch.ema\".\"t; --\" VALUES ('ا'), ('b'), ('c')")
        wconn.close()
        args = lab.login_args(databases=[WEIRD, "x"], expected_tables=['"sch.ema"."t; --"', "absent"],
                         checksum_tables=['"sch.ema"."t; --"'])
        result, _ = run_module("db_info", args, check=True)
        info = result["databases"][WEIRD]
        assert info["tables"] == {'sch.ema.t; --': {"rows": 3, "method": "exact"}}
        assert info["missing_tables"] == ["absent"]
        assert info["checksums"]['sch.ema.t; --']["rows"] == 3
        assert result["data_databases"] == [WEIRD]
        full, _ = run_module("db_info", lab.login_args())
        assert WEIRD in full["databases"] and "x" in full["databases"]
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname IN ('x', %s)", (WEIRD,))
            assert sorted(r[0] for r in cur.fetchall()) == sorted(["x", WEIRD])
    finally:
        with conn.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "we""ird; DROP DATABASE x;--é"')
            cur.execute("DROP DATABASE IF EXISTS x")
        conn.close()


def test_unknown_database_fails_listing_existing(lab_instance):
    result, _ = run_module("db_info", lab_instance.login_args(databases=["moncabinet", "nope"]))
    assert result.get("failed") is True
    assert result["msg"] == "database 'nope' does not exist on server; existing: moncabinet, postgres, qadhya"


def test_wrong_password_one_clear_line_without_the_password(lab_instance):
    lab = lab_instance
    bad = "Wr0ng-pass-" + "zq7"
    result, output = run_module("db_info", lab.login_args(login_password=bad), verbose=True)
    assert result.get("failed") is True
    ip = container_ip(lab.db)
    assert result["msg"] == (
        "password authentication failed for user 'moncabinet' on %s:5432; "
        "check login_password / DB_PASSWORD in the env file" % ip)
    assert bad not in output
    assert "ESTABLISH LOCAL CONNECTION" in output  # really ran with -vvv


def test_unreadable_env_file(lab_instance, tmp_path):
    result, _ = run_module("db_info", lab_instance.login_args(env_file=str(tmp_path / "missing.env")))
    assert result.get("failed") is True
    assert result["msg"] == ("env file %s does not exist; check env_file (the path on the Docker host)"
                             % (tmp_path / "missing.env"))
