"""The run records: result, message and kept values, from what the tasks registered."""

from ansible_collections.qadhya.dbops.plugins.filter import run_record as rr

JOURNAL_DIR = "/srv/backups/journal"
PLAN = dict(state="pending", source="moncabinet", target="qadhya", drop_target=True,
            configured_database="qadhya", reason="data in moncabinet")
STEPS = [dict(do="stop_app"), dict(do="rename", name="qadhya", target="moncabinet"),
         dict(do="start_app", database="moncabinet", healthy=True)]


def entry(step, at="2026-12-01T10:00:00.000000Z", **fields):
    return dict(fields, step=step, at=at)


SWITCH_JOURNAL = dict(entries=[
    entry("checkpoint", name="before the run", plan=dict(source="moncabinet", target="qadhya")),
    entry("backup", purpose="pre_consolidation",
          backup=dict(path="/b/moncabinet.dump", bytes=10, sha256="ab", verified=dict(ok=True), rows=3)),
    entry("backup", purpose="dropped_empty_target",
          backup=dict(path="/b/qadhya.dump", bytes=1, format="custom")),
    entry("env_write", set={"DB_NAME": "moncabinet"}),
    entry("app_start", action="restarted", env={"DB_NAME": "moncabinet"}),
    entry("checkpoint", name="app on its data"),
    entry("window", at="2026-12-01T10:00:01.000000Z", edge="open"),
    entry("app_stop"),
    entry("db_block", databases=["moncabinet", "qadhya"]),
    entry("db_drop", database="qadhya"),
    entry("db_rename", **{"from": "moncabinet", "to": "qadhya"}),
    entry("env_write", set={"DB_NAME": "qadhya"}),
    entry("app_start", action="started", env={"DB_NAME": "qadhya"}),
    entry("window", at="2026-12-01T10:00:01.750000Z", edge="close"),
    entry("verify", counts_before={"t": 3}, counts_after={"t": 3}),
])


def facts(**over):
    base = dict(host="lab", started_at="2026-12-01T10:00:00Z", finished_at="2026-12-01T10:00:09Z",
                check_mode=False, failures=[], go=True, held=False, pending=True, repoint=True, plan=PLAN,
                target="qadhya", counts_initial={"t": 3}, journal=SWITCH_JOURNAL, run_id="r1",
                journal_dir=JOURNAL_DIR, undos={}, interrupted="", migration={}, app_would="restart")
    base.update(over)
    return base


def failure(phase, task="Switch | Rename the database", msg="boom\nsecond line", run_id=""):
    return rr.run_failure(dict(name=task), dict(msg=msg), phase, run_id)


def test_run_failure_keeps_only_the_message():
    noted = rr.run_failure(dict(name="Stop the app", action="x"), dict(msg="refused", stdout="x"), "switch")
    assert noted == dict(phase="switch", task="Stop the app", msg="refused", run_id="")
    assert rr.run_failure({}, {}, "pre-check")["msg"] == ""


def test_success_reads_changes_backups_window_and_counts_from_the_journal():
    record = rr.consolidation_record(facts())
    assert record["result"] == "success" and record["message"] == ""
    assert record["changes"] == [
        "env file: DB_NAME=moncabinet", "app restarted on moncabinet",
        "dropped the empty qadhya (backed up first)", "renamed moncabinet to qadhya",
        "env file: DB_NAME=qadhya", "app started on qadhya"]
    assert record["downtime_s"] == 0.75
    assert record["counts_before"] == record["counts_after"] == {"t": 3}
    assert record["backup"] == dict(path="/b/moncabinet.dump", bytes=10, sha256="ab", verified=dict(ok=True))
    assert record["target_backup"] == dict(path="/b/qadhya.dump", bytes=1)
    assert (record["source"], record["target"], record["planned"]) == ("moncabinet", "qadhya", [])


def test_nothing_pending_and_no_change_is_unchanged():
    record = rr.consolidation_record(facts(pending=False, journal=dict(entries=[entry("checkpoint")])))
    assert record["result"] == "unchanged" and record["changes"] == []
    assert "downtime_s" not in record


def test_rolled_back_keeps_only_the_changes_before_the_last_checkpoint():
    undos = {"r1": dict(steps=STEPS)}
    journal = dict(entries=SWITCH_JOURNAL["entries"][:11])
    record = rr.consolidation_record(facts(failures=[failure("switch")], undos=undos, journal=journal))
    assert record["result"] == "rolled_back"
    assert record["message"] == ("Switch | Rename the database: boom — rolled back: renamed qadhya back to "
                                 "moncabinet, app running healthy on moncabinet")
    assert record["changes"] == ["env file: DB_NAME=moncabinet", "app restarted on moncabinet"]
    assert record["rollback"] == undos["r1"] and "downtime_s" not in record


def test_a_refusal_before_any_change_is_failed_not_rolled_back():
    record = rr.consolidation_record(facts(failures=[failure("switch")], undos={"r1": dict(steps=[])}))
    assert record["result"] == "failed" and record["message"] == "Switch | Rename the database: boom"


def test_a_failed_rollback_says_where_and_what_is_left():
    noted = [failure("switch"), failure("rollback", "Undo | Rename the database back to moncabinet",
                                        "still in use", "r1")]
    record = rr.consolidation_record(facts(failures=noted, undos={"r1": dict(steps=STEPS)}))
    assert record["result"] == "failed"
    assert record["message"] == (
        "Switch | Rename the database: boom — ROLLBACK FAILED at Undo | Rename the database back to "
        "moncabinet: still in use. The journal r1 (in /srv/backups/journal) still holds every change; fix "
        "the cause and run playbooks/rollback.yml, which resumes from the real state. By hand, remaining: "
        "stop_app, rename, start_app")
    assert "rollback" not in record


def test_pre_check_refusal_and_holds():
    refused = rr.consolidation_record(facts(failures=[failure("pre-check", msg="no such container")],
                                            journal={}))
    assert (refused["result"], refused["message"]) == ("failed", "pre-check: no such container")
    held = rr.consolidation_record(facts(go=False, journal={}))
    assert held["message"] == "held: another host failed its pre-check"
    batch = rr.consolidation_record(facts(held=True, journal={}))
    assert (batch["result"], batch["message"]) == ("failed", "held: another host failed or was rolled back")


def test_check_mode_plans_and_a_planning_failure_is_not_undone():
    record = rr.consolidation_record(facts(check_mode=True, journal={}, app_would="restarted",
                                           migration=dict(pending=["001.sql"])))
    assert record["result"] == "planned" and record["migrations_pending"] == ["001.sql"]
    assert record["planned"][0] == "back up moncabinet (verified)"
    assert record["planned"][-1].startswith("restart the app")
    failed = rr.consolidation_record(facts(check_mode=True, journal={}, failures=[failure("prepare")]))
    assert (failed["result"], failed["message"]) == ("failed", "Switch | Rename the database: boom")


def test_recovered_from_an_interrupted_run():
    undos = {"old": dict(steps=STEPS)}
    record = rr.consolidation_record(facts(interrupted="old", undos=undos))
    assert record["result"] == "success"
    assert record["recovered"].startswith("run old was interrupted; renamed qadhya back to moncabinet")


def test_migrations_in_the_record():
    result = dict(applied=[dict(name="001.sql", sha256="x")], adopted=["000.sql"], pending=[])
    record = rr.consolidation_record(facts(migration=result))
    assert record["migrations_applied"] == ["001.sql"] and record["migrations_adopted"] == ["000.sql"]
    assert record["migrations_pending"] == []


def test_rollback_outcome_of_an_interrupted_run():
    out = rr.rollback_outcome({}, [], "old", "run old was interrupted", JOURNAL_DIR)
    assert out == dict(result="failed", message="run old was interrupted", undone=False)
    out = rr.rollback_outcome({"old": dict(steps=[])}, [], "old", "run old was interrupted")
    assert out["undone"] and out["result"] == "failed"
    # A failure of another run's rollback is not this one's.
    other = [failure("rollback", run_id="r1")]
    assert rr.rollback_outcome({"old": dict(steps=STEPS)}, other, "old")["result"] == "rolled_back"


def rollback_facts(**over):
    last = dict(run_id="r1", state="success", entries=SWITCH_JOURNAL["entries"])
    base = dict(host="lab", started_at="2026-12-01T11:00:00Z", finished_at="2026-12-01T11:00:05Z",
                check_mode=False, failures=[], undos={"r1": dict(steps=STEPS)}, journal_dir=JOURNAL_DIR,
                interrupted="", last=last)
    base.update(over)
    return base


def test_rollback_record():
    record = rr.rollback_record(rollback_facts())
    assert record["result"] == "rolled_back" and record["kind"] == "rollback"
    assert record["message"].startswith("rolled back: renamed qadhya back to moncabinet")
    assert (record["source"], record["target"]) == ("moncabinet", "qadhya")
    planned = rr.rollback_record(rollback_facts(check_mode=True))
    assert planned["result"] == "planned"
    assert planned["message"].startswith("would roll back: renamed qadhya back to moncabinet"), \
        planned["message"]
    nothing = rr.rollback_record(rollback_facts(undos={"r1": dict(steps=[])}))
    assert (nothing["result"], nothing["message"]) == (
        "unchanged", "nothing to roll back: run r1 changed nothing that is still there")
    none = rr.rollback_record(rollback_facts(last={}, undos={}))
    assert none["message"] == "nothing to roll back: no consolidation journal in /srv/backups/journal"
    undone = dict(run_id="r1", state="undone", entries=[])
    done = rr.rollback_record(rollback_facts(last=undone, undos={}))
    assert done["message"] == "nothing to roll back: run r1 is undone"
    refused = rr.rollback_record(rollback_facts(failures=[failure("pre-check", msg="lock held\nmore")]))
    assert (refused["result"], refused["message"]) == ("failed", "rollback: lock held")
    recovered = rr.rollback_record(rollback_facts(interrupted="old", undos={"old": dict(steps=STEPS)}))
    assert recovered["result"] == "rolled_back"
    assert recovered["message"].startswith("run old was interrupted; ")


def migrate_facts(**over):
    base = dict(host="lab", started_at="2026-12-01T10:00:00.000001Z", check_mode=False, failures=[],
                database="moncabinet",
                migration=dict(pending=["001.sql"], would_adopt=[], already_applied=["0"]),
                backup={}, warnings=[])
    base.update(over)
    return base


def test_migrations_planned_is_the_same_before_and_after_the_apply():
    assert rr.migrations_planned(dict(pending=["1", "2"])) == ["1", "2"]
    assert rr.migrations_planned(dict(applied=[dict(name="1")], pending=["2"])) == ["1", "2"]
    assert rr.migrations_planned({}) == []


def test_migration_record():
    assert rr.migration_record(migrate_facts(migration=dict(pending=[])))["result"] == "unchanged"
    backup = dict(path="/b/m.dump", bytes=5, sha256="s", format="custom", verified={}, duration_s=1, kept=[])
    done = rr.migration_record(migrate_facts(
        backup=backup,
        migration=dict(applied=[dict(name="001.sql")], adopted=[], pending=[], lock_wait_ms=3)))
    assert done["result"] == "success" and done["pending"] == [] and done["lock_wait_ms"] == 3
    assert done["backup"] == dict(path="/b/m.dump", bytes=5, sha256="s", format="custom", verified={},
                                  duration_s=1)
    failed = rr.migration_record(migrate_facts(backup=backup, failures=[failure("migrate", msg="syntax\nx")]))
    assert failed["message"] == "syntax — the backup taken before is /b/m.dump"
    refused = rr.migration_record(migrate_facts(failures=[failure("pre-check", msg="no db")]))
    assert refused == dict(host="lab", kind="migrate", started_at="2026-12-01T10:00:00.000001Z",
                           check_mode=False, result="failed", message="pre-check: no db", pending=[])
    planned = rr.migration_record(migrate_facts(check_mode=True, backup=dict(path="/b/x", changed=True)))
    assert planned["result"] == "planned" and planned["pending"] == ["001.sql"]


def test_restore_record():
    chosen = dict(path="/b/m.dump", database="moncabinet", for_database="qadhya", purpose="scheduled",
                  taken_at="t", row_counts={"t": 3})
    base = dict(host="lab", started_at="s", check_mode=False, failures=[], backup=chosen, target="m_restored",
                restored=dict(changed=True, verified=dict(ok=True), duration_s=2, msg="restored"),
                counts_after={"t": 3})
    record = rr.restore_record(base)
    assert record["result"] == "success" and record["counts_manifest"] == {"t": 3}
    assert record["counts_after"] == {"t": 3} and record["message"] == "restored"
    assert rr.restore_record(dict(base, check_mode=True))["counts_after"] == {}
    failed = rr.restore_record(dict(base, failures=[failure("restore", msg="")]))
    assert failed["message"] == "restore failed" and failed["backup_path"] == "/b/m.dump"
    refused = rr.restore_record(dict(base, failures=[failure("pre-check", msg="no backup")]))
    assert refused["message"] == "pre-check: no backup" and "backup_path" not in refused


def test_report_base(monkeypatch):
    record = dict(host="lab", started_at="2026-12-01T10:00:00Z")
    assert rr.report_base(record, "/r") == "/r/lab-20261201T100000"
    assert rr.report_base(record, "/r", "check") == "/r/check/lab-20261201T100000"
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    assert rr.report_base(record) == "/state/qadhya.dbops/reports/lab-20261201T100000"


NAMES = dict(app="web", db="pg", user="app", health_url="http://h/api/health")
UNDO_JOURNAL = dict(run_id="r1", entries=[
    entry("checkpoint", expect=dict(database="moncabinet", healthy=True)),
    entry("app_stop"),
    entry("db_drop", database="qadhya", backup="/b/qadhya.dump"),
    entry("db_rename", **{"from": "moncabinet", "to": "qadhya"}),
    entry("env_write", file="/app/.env", backup="/app/.env.1~", sha256_before="b", sha256_after="a",
          set={"DB_NAME": "qadhya"}, previous={"DB_NAME": "moncabinet"}),
    entry("app_start"),
])


def probe(dbs, sha, running=False, holders=None):
    return dict(databases=dbs, env=dict(sha256=sha), holders=holders,
                app=dict(exists=True, running=running, previous_exists=False))


def test_undo_by_hand_says_where_things_stand_and_the_commands_left():
    left = rr.undo_by_hand(UNDO_JOURNAL, probe({"qadhya": True}, "a", holders=["qadhya"]), NAMES)
    assert left["now"] == ("the data is in qadhya; moncabinet does not exist; the env file as this run "
                           "wrote it (DB_NAME=qadhya); the app is stopped")
    assert left["steps"] == ["rename", "restore_db", "restore_env", "start_app"]
    assert left["commands"] == [
        "docker exec pg psql -U app -d postgres -v ON_ERROR_STOP=1 -c "
        "'ALTER DATABASE \"qadhya\" RENAME TO \"moncabinet\"'",
        "docker exec pg createdb -U app qadhya",
        "docker exec -i pg pg_restore -U app --exit-on-error -d qadhya < /b/qadhya.dump",
        "cp -p '/app/.env.1~' /app/.env",
        "docker start web",
        "curl -fsS --retry 60 --retry-delay 1 --retry-all-errors http://h/api/health"]
    # The rename back done, the start refused: only the start is left.
    left = rr.undo_by_hand(UNDO_JOURNAL, probe({"qadhya": True, "moncabinet": True}, "b",
                                               holders=["moncabinet"]), NAMES)
    assert left["now"].startswith("the data is in moncabinet; qadhya exists, holding no data; the env file "
                                  "as before this run wrote it (DB_NAME=moncabinet)")
    assert left["commands"][0] == "docker start web" and len(left["commands"]) == 2


def test_undo_by_hand_moves_a_newcomer_aside_first_and_never_drops_it():
    left = rr.undo_by_hand(UNDO_JOURNAL, probe({"qadhya": True, "moncabinet": True}, "a", True, ["qadhya"]),
                           NAMES)
    assert "appeared since" in left["refusal"]
    assert "moncabinet exists, holding no data" in left["now"] and "the app is running" in left["now"]
    assert left["commands"][0].endswith("'ALTER DATABASE \"moncabinet\" RENAME TO \"moncabinet_appeared\"'")
    assert left["commands"][1:3] == ["docker stop web", left["commands"][2]]
    assert "DROP" not in " ".join(left["commands"])
    # Both holding data: no command, a person decides.
    left = rr.undo_by_hand(UNDO_JOURNAL, probe({"qadhya": True, "moncabinet": True}, "a",
                                               holders=["qadhya", "moncabinet"]), NAMES)
    assert left["commands"] == [] and "both" in left["refusal"]


def test_a_failed_rollback_with_the_state_probed_after_it():
    left = rr.undo_by_hand(UNDO_JOURNAL, probe({"qadhya": True}, "a", holders=["qadhya"]), NAMES)
    noted = [failure("switch"), dict(failure("rollback", "Rename | Rename", "pinned", "r1"), left=left)]
    record = rr.consolidation_record(facts(failures=noted, undos={"r1": dict(steps=STEPS)}))
    assert record["result"] == "failed" and record["by_hand"] == left["commands"]
    assert record["now"] == left["now"]
    assert record["message"].startswith(
        "Switch | Rename the database: boom — ROLLBACK FAILED at Rename | Rename: pinned. Now: the data is "
        "in qadhya; ")
    assert ("(in /srv/backups/journal) still holds every change. To finish by hand: docker exec pg psql"
            in record["message"])
    assert record["message"].endswith("; or fix the cause and run playbooks/rollback.yml, which resumes from "
                                      "the real state")
    assert " && ".join(left["commands"]) in record["message"] and "\n" not in record["message"]
