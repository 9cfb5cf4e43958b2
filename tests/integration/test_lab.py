"""The lab reproduces the incident of MISSION.md exactly, and resets in seconds."""

import json
import os
import socket
import stat
import time

import pytest

pytestmark = pytest.mark.integration


DASHBOARD_ERROR = "Impossible de charger les métriques. Vérifiez la connexion à la base de données."
INCIDENT_COUNTS = {
    "moncabinet": {"knowledge_base": 580, "users": 2, "web_sources": 6, "ai_usage_logs": 0, "_migrations": 0},
    "qadhya": {"knowledge_base": 0, "ai_usage_logs": 0, "_migrations": 0},
    "postgres": {},
}


def assert_incident_state(lab):
    status = lab.status()
    databases = status["databases"]
    assert sorted(databases) == ["moncabinet", "postgres", "qadhya", "template0", "template1"]
    assert {db: tables for db, tables in databases.items() if tables is not None} == INCIDENT_COUNTS
    assert status["env_db_name"] == "qadhya"
    code, body = lab.health()
    assert code == 503
    assert body["error"] == DASHBOARD_ERROR
    assert body["database"] == "qadhya"


def wait_health(lab, code, timeout=20):
    return lab.wait_for(lambda: lab.health()[0] == code, timeout=timeout)


def test_incident_row_counts(lab_instance):
    assert_incident_state(lab_instance)


def test_user_validation_stats_missing_everywhere(lab_instance):
    for db in ("moncabinet", "qadhya"):
        assert lab_instance.psql(db, "SELECT to_regclass('public.user_validation_stats') IS NULL") == [["t"]]


def test_data_is_utf8_french_and_arabic(lab_instance):
    rows = lab_instance.psql("moncabinet", "SELECT language, count(*), min(octet_length(content)) "
                             "FROM knowledge_base GROUP BY 1 ORDER BY 1")
    counts = {lang: int(n) for lang, n, _ in rows}
    assert set(counts) == {"ar", "fr"} and sum(counts.values()) == 580
    assert min(int(size) for *_, size in rows) > 10_000
    encodings = lab_instance.psql("postgres",
                                  "SELECT DISTINCT pg_encoding_to_char(encoding) FROM pg_database")
    assert encodings == [["UTF8"]]
    (arabic,) = lab_instance.psql("moncabinet", "SELECT count(*) FROM knowledge_base WHERE content ~ '[ء-ي]'")
    assert int(arabic[0]) > 0


def test_env_file_incident_content(lab_instance):
    env_file = lab_instance.env_file
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#")
    keys = [line.split("=", 1)[0] for line in lines[1:] if line]
    assert keys[:5] == ["DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST", "DB_PORT"]
    assert "DB_NAME=qadhya" in lines and "DB_HOST=postgres" in lines and "DB_PORT=5432" in lines
    assert 'APP_TITLE="Qadhya – Assistant juridique"' in lines
    backups = env_file.parent.parent / "backups"
    assert backups.is_dir() and not any(backups.iterdir())
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700


def test_env_command_describes_instance(lab_instance):
    info = json.loads(lab_instance.run_lab("env", "--instance", lab_instance.name).stdout)
    assert info["db_container"] == f"qadhya-{lab_instance.name}-postgres"
    assert info["app_container"] == f"qadhya-{lab_instance.name}-nextjs"
    assert info["network"] == f"qadhya-lab-{lab_instance.name}"
    assert info["health_url"].endswith("/api/health")


def test_docker_reports_app_unhealthy_in_incident(lab_instance):
    assert lab_instance.docker_health(lab_instance.db) == "healthy"
    assert lab_instance.wait_for(lambda: lab_instance.docker_health() == "unhealthy", timeout=30)


def test_mounted_mode_restart_picks_up_env(incident_lab):
    incident_lab.set_env("DB_NAME", "moncabinet")
    incident_lab.docker("restart", incident_lab.app)
    assert wait_health(incident_lab, 200)
    code, body = incident_lab.health()
    assert (code, body["database"], body["documents"]) == (200, "moncabinet", 580)


def test_created_mode_needs_recreate(incident_lab):
    incident_lab.reset("--mode", "created")
    incident_lab.set_env("DB_NAME", "moncabinet")
    incident_lab.docker("restart", incident_lab.app)
    time.sleep(1)
    assert incident_lab.wait_for(lambda: incident_lab.health()[0] is not None)
    assert incident_lab.health()[0] == 503, "a restart must keep the environment given at creation"
    incident_lab.run_lab("recreate-app", "--instance", incident_lab.name)
    assert wait_health(incident_lab, 200)
    assert incident_lab.health()[1]["documents"] == 580


def test_reset_restores_incident_state_quickly(incident_lab):
    incident_lab.psql("postgres", "DROP DATABASE qadhya")
    incident_lab.psql("moncabinet", "DELETE FROM knowledge_base WHERE id > 100")
    incident_lab.set_env("DB_NAME", "moncabinet")
    started = time.monotonic()
    incident_lab.reset()
    elapsed = time.monotonic() - started
    assert_incident_state(incident_lab)
    assert elapsed < 30, f"reset took {elapsed:.1f}s"


def test_docker_stop_of_app_is_fast(incident_lab):
    started = time.monotonic()
    incident_lab.docker("stop", incident_lab.app)
    elapsed = time.monotonic() - started
    incident_lab.docker("start", incident_lab.app)
    assert elapsed < 2, f"docker stop took {elapsed:.2f}s: the app ignores SIGTERM"


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lab: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_instance_is_refused(lab_instance):
    proc = lab_instance.run_lab("status", "--instance", "never-created", check=False)
    assert_one_line_error(proc, "unknown instance 'never-created'", lab_instance.name, "lab.py up")


def test_port_in_use_is_refused(lab_instance):
    port = lab_instance.free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = lab_instance.run_lab("up", "--instance", "itbusy", "--port", port, check=False)
    assert_one_line_error(proc, f"port {port} is already in use", "--port")
    assert "itbusy" not in lab_instance.run_lab("env", "--instance", lab_instance.name).stdout


def test_no_docker_engine_is_reported(lab_instance):
    proc = lab_instance.run_lab("status", "--instance", lab_instance.name,
                   env={"DOCKER_HOST": "unix:///nonexistent"}, check=False)
    assert_one_line_error(proc, "no Docker engine answers at /nonexistent", "dockerd")


def test_lab_root_is_configurable(lab_instance, tmp_path):
    proc = lab_instance.run_lab("status", "--instance", lab_instance.name,
                   env={"QADHYA_LAB_ROOT": os.fspath(tmp_path)}, check=False)
    assert_one_line_error(proc, "unknown instance", "known: none")
