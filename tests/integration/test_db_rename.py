# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qadhya.dbops.db_rename through real `ansible` against a lab instance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg2
import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WEIRD_SRC = 'we"ird; DROP DATABASE x;--é'
WEIRD_DST = 'نهائي "db"; --'


def run_module(module, args, check=False):
    """Run one module ad hoc; returns the result dict (with `failed`)."""
    return labkit.run_module(module, args, check=check)[0]


def container_ip(name):
    return subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
        capture_output=True, text=True, check=True).stdout.split()[0]


def pg(lab, dbname="postgres", app="it-test"):
    conn = psycopg2.connect(host=container_ip(lab.db), user=lab.info["db_user"], dbname=dbname,
                            password=lab.info["db_password"], connect_timeout=5, application_name=app)
    conn.autocommit = True
    return conn


def query(lab, text, params=None, dbname="postgres"):
    conn = pg(lab, dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def databases(lab):
    """{name: allow_connections} of the non-template databases."""
    return dict(query(lab, "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate"))


def rows(lab, dbname, table):
    return query(lab, 'SELECT count(*) FROM "%s"' % table, dbname=dbname)[0][0]




def test_consolidate_terminates_renames_and_is_idempotent(incident_lab):
    lab = incident_lab
    holder = pg(lab, "moncabinet", app="it-holder")  # an app session still connected
    idle = pg(lab, "qadhya", app="it-idle")
    task = lab.login_args(name="moncabinet", target="qadhya", drop_empty_target=True)

    planned = run_module("db_rename", task, check=True)
    assert planned["changed"] is True and planned["failed"] is False
    assert planned["would_rename"] is True and planned["would_drop"] is True
    assert planned["would_terminate"] == 2
    assert planned["renamed"] is False and planned["dropped_target"] is False
    assert databases(lab) == {"moncabinet": True, "qadhya": True, "postgres": True}
    with holder.cursor() as cur:  # still alive: check mode ended nothing
        cur.execute("SELECT count(*) FROM knowledge_base")
        assert cur.fetchone()[0] == 580

    done = run_module("db_rename", task)
    assert done["failed"] is False and done["changed"] is True
    assert done["renamed"] is True and done["dropped_target"] is True
    assert done["terminated"] >= 2
    assert databases(lab) == {"qadhya": True, "postgres": True}
    assert rows(lab, "qadhya", "knowledge_base") == 580
    assert rows(lab, "qadhya", "users") == 2
    assert rows(lab, "qadhya", "web_sources") == 6
    for conn in (holder, idle):
        with pytest.raises(psycopg2.Error), conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert lab.info["db_password"] not in json.dumps(done)
    print("\ndb_rename on the lab: elapsed %d ms, connections blocked %d ms, %d session(s) ended"
          % (done["elapsed_ms"], done["blocked_ms"], done["terminated"]))

    again = run_module("db_rename", task)
    assert again["failed"] is False and again["changed"] is False and again["renamed"] is False
    again_check = run_module("db_rename", task, check=True)
    assert again_check["changed"] is False
    assert databases(lab) == {"qadhya": True, "postgres": True}


def test_target_with_data_is_refused_and_both_stay_intact(incident_lab):
    lab = incident_lab
    query(lab, "CREATE TABLE keep (i int); INSERT INTO keep SELECT generate_series(1, 3)", dbname="qadhya")
    task = lab.login_args(name="moncabinet", target="qadhya", drop_empty_target=True)
    expected = ("target database 'qadhya' holds data (3 rows in keep); "
                "consolidation refused — nothing was changed")
    for check in (True, False):
        result = run_module("db_rename", task, check=check)
        assert result["failed"] is True and result["msg"] == expected
    assert databases(lab) == {"moncabinet": True, "qadhya": True, "postgres": True}
    assert rows(lab, "qadhya", "keep") == 3
    assert rows(lab, "moncabinet", "knowledge_base") == 580


def test_existing_empty_target_needs_drop_empty_target(incident_lab):
    lab = incident_lab
    result = run_module("db_rename", lab.login_args(name="moncabinet", target="qadhya"))
    assert result["failed"] is True
    assert result["msg"] == ("target database 'qadhya' exists (empty); set drop_empty_target: true "
                             "to drop it first — nothing was changed")
    assert databases(lab) == {"moncabinet": True, "qadhya": True, "postgres": True}


def test_refusals_before_anything(incident_lab):
    lab = incident_lab
    result = run_module("db_rename", lab.login_args(name="moncabinet", target="qadhya",
                                          maintenance_db="moncabinet"))
    assert result["failed"] is True
    assert result["msg"].startswith("name 'moncabinet' is the maintenance database")
    result = run_module("db_rename", lab.login_args(name="gone1", target="gone2"))
    assert result["failed"] is True
    assert result["msg"] == "neither 'gone1' nor 'gone2' exists on the server; check name and target"
    assert databases(lab) == {"moncabinet": True, "qadhya": True, "postgres": True}


def test_hostile_names(lab_instance):
    lab = lab_instance
    conn = pg(lab)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE x")  # would vanish if a name were ever executed
            cur.execute('CREATE DATABASE "we""ird; DROP DATABASE x;--é"')
        query(lab, "CREATE TABLE t (v text); INSERT INTO t VALUES ('ا'), ('b')", dbname=WEIRD_SRC)
        task = lab.login_args(name=WEIRD_SRC, target=WEIRD_DST)

        planned = run_module("db_rename", task, check=True)
        assert planned["changed"] is True and planned["would_rename"] is True
        assert WEIRD_SRC in databases(lab) and WEIRD_DST not in databases(lab)

        done = run_module("db_rename", task)
        assert done["failed"] is False and done["renamed"] is True
        names = databases(lab)
        assert WEIRD_SRC not in names and names[WEIRD_DST] is True and "x" in names
        assert rows(lab, WEIRD_DST, "t") == 2

        again = run_module("db_rename", task)
        assert again["failed"] is False and again["changed"] is False
    finally:
        with conn.cursor() as cur:
            for name in (WEIRD_SRC, WEIRD_DST, "x"):
                cur.execute('DROP DATABASE IF EXISTS "%s"' % name.replace('"', '""'))
        conn.close()
