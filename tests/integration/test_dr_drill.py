"""dr_drill.yml on a lab instance: a real moto S3 server holds the off-host copy, a real scratch
PostgreSQL container of the production image receives it; schedule.yml installs it weekly."""

import json
import re

import pytest
from alertkit import Receiver
from labkit import REPO, docker, host_vars, instance_name, run_playbook, write_inventory
from s3kit import s3  # noqa: F401 (the fixture)

INSTANCE = instance_name("drill")
PLAYBOOKS = REPO / "playbooks"
RECORD_NAME = re.compile(r"^(?P<host>.+)-\d{8}T\d{6}Z\.json$")


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab


@pytest.fixture(scope="module")
def drill_env(lab, s3, tmp_path_factory):  # noqa: F811
    """An inventory with the bucket, and one verified backup of moncabinet uploaded to it."""
    work = tmp_path_factory.mktemp("drill")
    prefix = "drill/" + lab.name
    hv = host_vars(lab.info, work, dbops_backup_database="moncabinet", **s3.vars(prefix))
    inventory = write_inventory(work / "inventory.json", {lab.name: hv})
    proc = run_playbook(PLAYBOOKS / "backup.yml", inventory)
    assert proc.returncode == 0, proc.stdout[-3000:]
    backup = json.loads((work / "reports" / "backup" / (lab.name + "-latest.json")).read_text())["backup"]
    return dict(work=work, inventory=inventory, prefix=prefix, backup=backup)


def scratch_containers(lab):
    return docker("ps", "-a", "--filter", "name=^/%s-drill$" % lab.db,
                  "--format", "{{.Names}}").stdout.split()


def records(work):
    drill = work / "reports" / "drill"
    return sorted(p for p in drill.glob("*.json") if RECORD_NAME.match(p.name)) if drill.is_dir() else []


def test_drill_restores_the_offsite_copy_and_removes_the_scratch_container(lab, s3, drill_env):  # noqa: F811
    work, inventory = drill_env["work"], drill_env["inventory"]

    planned = run_playbook(PLAYBOOKS / "dr_drill.yml", inventory, "--check")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert "would restore s3://%s/%s/" % (s3.bucket, drill_env["prefix"]) in planned.stdout
    assert scratch_containers(lab) == [] and records(work) == []
    assert not (work / "backups" / "drill").exists() or not any((work / "backups" / "drill").iterdir())

    proc = run_playbook(PLAYBOOKS / "dr_drill.yml", inventory)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert s3.secret_key not in proc.stdout + proc.stderr
    assert scratch_containers(lab) == []
    [path] = records(work)
    assert RECORD_NAME.match(path.name)["host"] == lab.name
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["reason"] == "", record
    assert record["host"] == lab.name and record["source"] == "offsite"
    assert record["backup"]["sha256"] == drill_env["backup"]["sha256"]
    name = drill_env["backup"]["path"].rsplit("/", 1)[1]
    assert record["backup"]["key"] == "%s/%s" % (drill_env["prefix"], name)
    assert record["tables_checked"] == len(drill_env["backup"]["row_counts"]) > 0
    assert record["rows_checked"] == sum(drill_env["backup"]["row_counts"].values())
    # Every table's content checksum of the restored copy equals the manifest's.
    assert record["compared"] == "counts and checksums"
    assert record["checksums_checked"] == len(drill_env["backup"]["checksums"]) == record["tables_checked"]
    assert "every content checksum equal to the manifest" in " ".join(proc.stdout.split())
    assert 0 < record["recovery_seconds"] < 600
    assert 0 <= record["data_age_seconds"] < 3600
    assert record["scratch_removed"] is True and record["started_at"].endswith("Z")
    # The image of the production container, and nothing fetched is left behind.
    image = docker("inspect", "--format", "{{.Config.Image}}", lab.db).stdout.strip()
    assert record["image"] == image
    assert not any((work / "backups" / "drill").iterdir())
    assert json.loads((work / "reports" / "drill" / (lab.name + "-latest.json")).read_text()) == record


def test_drill_on_a_damaged_copy_fails_in_one_line_and_still_removes_the_container(lab, s3, drill_env):  # noqa: F811
    work, inventory = drill_env["work"], drill_env["inventory"]
    name = drill_env["backup"]["path"].rsplit("/", 1)[1]
    key = "%s/%s" % (drill_env["prefix"], name)
    original = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one byte flipped: only the sha256 can tell
    s3.put(key, bytes(damaged), sha256=drill_env["backup"]["sha256"])
    before = set(records(work))
    try:
        with Receiver() as rx:
            proc = run_playbook(PLAYBOOKS / "dr_drill.yml", inventory,
                                "-e", "dbops_alert_webhook_url=" + rx.webhook_url())
    finally:
        s3.put(key, original, sha256=drill_env["backup"]["sha256"])
    assert proc.returncode != 0
    [alert] = rx.webhooks()
    assert alert["host"] == lab.name and alert["check"] == "drill" and "is damaged" in alert["reason"]
    assert s3.secret_key not in json.dumps(alert)
    # The callback may wrap a long message: read it with the line breaks folded.
    text = " ".join(proc.stdout.split())
    assert re.search(r"msg: '?drill failed: the copy s3://\S+ is damaged: [^']*; use another copy",
                     text), text[-3000:]
    assert scratch_containers(lab) == []
    [path] = sorted(set(records(work)) - before)
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "is damaged" in record["reason"] and "\n" not in record["reason"]
    assert record["scratch_removed"] is True and record["tables_checked"] == 0
    assert not any((work / "backups" / "drill").iterdir())


def test_schedule_installs_the_weekly_drill(tmp_path):
    cron_file = tmp_path / "cron.d" / "qadhya-dbops"
    cron_file.parent.mkdir()
    args = ["-c", "local", "-e", "dbops_schedule_cron_file=%s" % cron_file,
            "-e", "dbops_schedule_log_dir=%s" % (tmp_path / "logs"), "-e", "dbops_schedule_user=root",
            "-e", "dbops_schedule_drill_time=05:10", "-e", "dbops_schedule_drill_weekday=sat"]
    proc = run_playbook(PLAYBOOKS / "schedule.yml", "localhost,", *args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [ln for ln in cron_file.read_text().splitlines() if ln and not ln.startswith("#")]
    drill = [ln for ln in lines if "/dr_drill.yml" in ln]
    assert len(lines) == 3 and len(drill) == 1, lines
    assert drill[0].startswith("10 5 * * sat root cd ")
    assert ">> %s/dr_drill.log 2>&1" % (tmp_path / "logs") in drill[0]
    assert next(ln for ln in lines if "/check.yml" in ln).startswith("0 6 * * * root ")

    bad = run_playbook(PLAYBOOKS / "schedule.yml", "localhost,", *args,
                       "-e", "dbops_schedule_drill_weekday=someday")
    assert bad.returncode != 0 and "dbops_schedule_drill_weekday 0-7 or sun..sat (is someday)" in bad.stdout
