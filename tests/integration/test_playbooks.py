"""The follow-up playbooks (check, backup, restore, migrate, schedule) on a real lab instance.

One instance for the module, walked through the operator's sequence: the
daily check on the incident state, the app repointed at its data as in the
report, a scheduled backup with retention, a restore of that backup into a
new database, the pending migration behind a backup, and the cron schedule.
Each playbook: check mode changes nothing -> real run -> real state -> rerun.
"""

import json
import re
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
INSTANCE = labkit.instance_name("itplaybooks")
MIGRATION = "20260213_kb_validation_gamification.sql"


@pytest.fixture(scope="module")
def lab():
    """Our own lab instance in the incident state, removed at the end."""
    if labkit.docker("version", "--format", "{{.Server.Version}}", check=False).returncode != 0:
        pytest.fail("no Docker engine answers; the integration tests need one")
    yield labkit.lab_up(INSTANCE)
    labkit.run_lab("down", "--instance", INSTANCE, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("playbooks")


@pytest.fixture(scope="module")
def inventory(lab, work):
    return labkit.write_inventory(work / "inventory.json", {"lab-it": labkit.host_vars(lab.info, work)})


def run(playbook, inventory, *args):
    return labkit.run_playbook(PLAYBOOKS / playbook, inventory, *args)


def recap(output, host="lab-it"):
    pattern = r"\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
    match = re.search(re.escape(host) + pattern, output)
    assert match, output[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True))


def report(work, kind):
    path = work / "reports" / kind / "lab-it-latest.json"
    assert path.exists(), "no %s report" % kind
    return json.loads(path.read_text())


def databases(lab):
    return sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database"))


def count(lab, db, table):
    return int(lab.psql(db, f"SELECT count(*) FROM {table}")[0][0])


def mode(path):
    return oct(Path(path).stat().st_mode & 0o777)


def app_identity(lab):
    """Container id and start time: unchanged means the app was left alone."""
    out = lab.docker("inspect", "--format", "{{.Id}} {{.State.StartedAt}}", lab.app).stdout.strip()
    return out




def test_check_reports_the_incident(lab, inventory, work):
    password = lab.info["db_password"]
    planned = run("check.yml", inventory, "--check")
    assert planned.returncode != 0, planned.stdout[-3000:]
    assert recap(planned.stdout)["changed"] == 0
    assert not (work / "reports" / "check").exists(), "check mode wrote a report"

    proc = run("check.yml", inventory, "-vvv")
    out = proc.stdout
    assert proc.returncode != 0, "critical must exit non-zero: " + out[-3000:]
    assert recap(out)["changed"] == 0
    assert password not in out and password not in proc.stderr
    result = report(work, "check")
    checks = {c["check"]: c for c in result["checks"]}
    assert result["result"] == "critical"
    assert checks["configuration"]["status"] == "critical"
    assert "they disagree" in checks["configuration"]["detail"]
    assert checks["migrations"]["status"] == "warning" and MIGRATION in checks["migrations"]["detail"]
    assert checks["backup"]["status"] == "critical"
    assert checks["health_url"]["status"] == "critical" and "503" in checks["health_url"]["detail"]
    assert checks["database"]["status"] == "ok" and checks["disk"]["status"] == "ok"
    assert result["pending_migrations"] == [MIGRATION] and result["mismatch"] is True
    assert password not in json.dumps(result)
    markdown = sorted((work / "reports" / "check").glob("lab-it-2*.md"))
    assert markdown and "CRITICAL" in markdown[-1].read_text()
    # The summary table is the last thing printed before the alert.
    tail = out[out.rindex("Report | Summary"):]
    assert "lab-it" in tail and "configuration=CRITICAL" in tail
    # Nothing was touched.
    assert databases(lab) == ["moncabinet", "postgres", "qadhya", "template0", "template1"]


def test_backup_is_verified_private_and_pruned(lab, inventory, work):
    # As in step 3 of the incident: the app is pointed at its data.
    lab.set_env("DB_NAME", "moncabinet")
    backups = work / "backups"
    backups.mkdir(mode=0o700)
    old = labkit.fake_backup(backups, "moncabinet", "moncabinet", "20250101T000000Z")
    foreign = ["notes.txt", "moncabinet-20250102T000000Z.sql.gz"]
    for name in foreign:
        (backups / name).write_text("not a backup of ours")
    before = sorted(p.name for p in backups.iterdir())

    planned = run("backup.yml", inventory, "--check", "-e", "dbops_backup_retention_keep=1")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert sorted(p.name for p in backups.iterdir()) == before
    assert re.search(r"lab-it +planned +moncabinet", planned.stdout), planned.stdout[-2000:]

    proc = run("backup.yml", inventory, "-e", "dbops_backup_retention_keep=1")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)["changed"] >= 1, "a backup run always writes a new backup"
    result = report(work, "backup")
    assert result["result"] == "success" and result["database"] == "moncabinet"
    dump = Path(result["backup"]["path"])
    manifest = Path(str(dump) + ".manifest.json")
    assert dump.exists() and mode(dump) == "0o600" and mode(manifest) == "0o600"
    meta = json.loads(manifest.read_text())
    assert meta["verified"]["ok"] is True and meta["verified"]["level"] == "structure"
    assert meta["row_counts"]["knowledge_base"] == 580 and meta["sha256"] == result["backup"]["sha256"]
    left = sorted(p.name for p in backups.iterdir())
    assert old not in left and old + ".manifest.json" not in left
    assert all(name in left for name in foreign), left
    assert [Path(p).name for p in result["backup"]["deleted"]] == [old]


def test_restore_into_new_database_leaves_live_alone(lab, inventory, work):
    env_before = lab.env_file.read_bytes()
    app_before = app_identity(lab)
    backup = report(work, "backup")["backup"]

    proc = run("restore.yml", inventory)
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = report(work, "restore")
    target = result["target"]
    assert result["result"] == "success" and result["backup_path"] == backup["path"]
    assert re.fullmatch(r"moncabinet_restored_\d{8}_\d{6}", target), target
    assert target in databases(lab)
    assert result["counts_after"] == result["counts_manifest"] == backup["row_counts"]
    assert [count(lab, target, t) for t in ("knowledge_base", "users", "web_sources")] == [580, 2, 6]
    # Arabic and French text survive the round trip.
    assert lab.psql(target, "SELECT md5(string_agg(content, '' ORDER BY id)) FROM knowledge_base") == \
        lab.psql("moncabinet", "SELECT md5(string_agg(content, '' ORDER BY id)) FROM knowledge_base")
    assert lab.env_file.read_bytes() == env_before and app_identity(lab) == app_before
    assert count(lab, "moncabinet", "knowledge_base") == 580 and count(lab, "qadhya", "knowledge_base") == 0

    again = run("restore.yml", inventory, "-e", "dbops_restore_target=" + target)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout)["changed"] == 0
    assert report(work, "restore")["result"] == "unchanged"

    refused = run("restore.yml", inventory, "-e", "dbops_restore_target=moncabinet")
    assert refused.returncode != 0
    assert "a live database" in refused.stdout
    assert report(work, "restore")["result"] == "failed"
    assert count(lab, "moncabinet", "knowledge_base") == 580 and app_identity(lab) == app_before


def test_migrate_backs_up_first_then_is_idempotent(lab, inventory, work):
    backups = work / "backups"
    dumps_before = sorted(backups.glob("moncabinet-*.dump"))

    planned = run("migrate.yml", inventory, "--check")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert "would apply: " + MIGRATION in planned.stdout, planned.stdout[-2500:]
    assert sorted(backups.glob("moncabinet-*.dump")) == dumps_before
    assert lab.psql("moncabinet", "SELECT to_regclass('user_validation_stats') IS NULL") == [["t"]]

    proc = run("migrate.yml", inventory)
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = report(work, "migrate")
    assert result["result"] == "success" and result["database"] == "moncabinet"
    assert [m["name"] for m in result["applied"]] == [MIGRATION]
    assert result["backup"]["verified"]["ok"] is True
    new = sorted(set(backups.glob("moncabinet-*.dump")) - set(dumps_before))
    assert [str(p) for p in new] == [result["backup"]["path"]]
    taken = json.loads(Path(str(new[0]) + ".manifest.json").read_text())
    assert "user_validation_stats" not in taken["row_counts"], "the backup was taken before the migration"
    assert count(lab, "moncabinet", "user_validation_stats") == 2
    assert lab.psql("moncabinet", "SELECT name FROM _migrations") == [[MIGRATION]]
    assert count(lab, "qadhya", "knowledge_base") == 0

    again = run("migrate.yml", inventory)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout)["changed"] == 0
    assert report(work, "migrate")["result"] == "unchanged"
    after = sorted(backups.glob("moncabinet-*.dump"))
    assert after == sorted(dumps_before + new), "nothing pending, no backup"


def test_switch_to_the_restored_copy_as_documented(lab, inventory, work):
    """docs/playbooks/restore.md: stop the app, move the live database aside, consolidate.yml.

    The copy was restored before the migration: consolidate.yml applies it on the way."""
    target = next(d for d in databases(lab) if d.startswith("moncabinet_restored_"))
    lab.docker("stop", lab.app)
    lab.psql("postgres", 'ALTER DATABASE moncabinet RENAME TO moncabinet_damaged')
    proc = run("consolidate.yml", inventory,
               "-e", "dbops_source_db=" + target, "-e", "dbops_target_db=moncabinet")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert target not in databases(lab) and "moncabinet" in databases(lab)
    assert [count(lab, "moncabinet", t) for t in ("knowledge_base", "users", "web_sources",
                                                  "user_validation_stats")] == [580, 2, 6, 2]
    assert re.search(r"^DB_NAME=moncabinet$", lab.env_file.read_text(), re.M)
    status, body = lab.health()
    assert status == 200 and body["database"] == "moncabinet" and body["documents"] == 580
    lab.psql("postgres", "DROP DATABASE moncabinet_damaged")


def test_schedule_writes_cron_file_idempotently(inventory, work):
    cron_dir = work / "cron.d"
    cron_dir.mkdir()
    cron_file = cron_dir / "qadhya-dbops"
    args = ["-e", "dbops_schedule_cron_file=%s" % cron_file,
            "-e", "dbops_schedule_log_dir=%s" % (work / "logs"),
            "-e", "dbops_schedule_user=root",
            "-e", "dbops_schedule_backup_time=03:15"]

    planned = run("schedule.yml", inventory, "--check", *args)
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert not cron_file.exists()

    proc = run("schedule.yml", inventory, *args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [line for line in cron_file.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 3, lines  # check, backup, the weekly dr_drill.yml
    check_line = next(line for line in lines if "/check.yml" in line)
    backup_line = next(line for line in lines if "/backup.yml" in line)
    assert check_line.startswith("0 6 * * * root cd ")
    assert backup_line.startswith("15 3 * * * root cd ")
    assert "-i %s" % inventory in backup_line and str(PLAYBOOKS / "backup.yml") in backup_line
    assert ">> %s/backup.log 2>&1" % (work / "logs") in backup_line
    assert (work / "logs").is_dir()

    again = run("schedule.yml", inventory, *args)
    assert again.returncode == 0
    assert recap(again.stdout, host="localhost")["changed"] == 0

    removed = run("schedule.yml", inventory, *args, "-e", "dbops_schedule_state=absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not cron_file.exists()
