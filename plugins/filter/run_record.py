# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Build a run's record from what its tasks registered (docs in the sidecar .yml files).

A playbook keeps no state machine of facts: each phase registers its module
results, a rescue notes what failed (run_failure), and one task at the end
turns all of it into the record the report and summary print. The rules that
decide the result and its one-line message live here, unit-tested.
"""

import datetime
import os
import shlex

from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.filter.consolidation import consolidation_steps
from ansible_collections.qadhya.dbops.plugins.filter.journal import Refusal, plan_undo, undo_describe

BACKUP_KEYS = ("path", "bytes", "sha256", "format", "verified", "duration_s", "throughput_mb_s",
               "manifest_path", "deleted")
TARGET_BACKUP_KEYS = ("path", "bytes", "sha256", "verified")
MIGRATE_BACKUP_KEYS = ("path", "bytes", "sha256", "format", "verified", "duration_s")
# Journal steps that are records, not changes a person needs listed.
NOT_CHANGES = ("checkpoint", "db_block", "app_stop", "migration", "backup", "window", "verify")


def first_line(text, default="failed"):
    lines = ("" if text is None else str(text)).splitlines()
    return lines[0] if lines and lines[0] else default


def _pick(result, keys):
    result = result or {}
    return {key: result[key] for key in keys if key in result}


def _ok(result):
    """A registered result that ran and did not fail."""
    return bool(result) and not result.get("failed") and not result.get("skipped")


def run_failure(task, result, phase, run_id=""):
    """What failed, kept when a rescue starts: {phase, task, msg, run_id}."""
    task, result = task or {}, result or {}
    msg = result.get("msg")
    return dict(phase=phase, task=task.get("name") or "", msg="" if msg is None else str(msg),
                run_id=run_id or "")


def _cause(failure):
    return "%s: %s" % (failure.get("task") or "a step", first_line(failure.get("msg")))


def _sql_ident(name):
    return '"%s"' % str(name).replace('"', '""')


def _env_state(entries, sha):
    """How the env file stands against this run's writes of it."""
    writes = [e for e in entries if e.get("step") == "env_write"]
    if not writes or not sha:
        return ""
    if sha == writes[-1].get("sha256_after"):
        return "the env file as this run wrote it (%s)" % ", ".join(
            "%s=%s" % kv for kv in (writes[-1].get("set") or {}).items())
    for entry in writes:
        if sha == entry.get("sha256_before"):
            previous = entry.get("previous") or {}
            return "the env file as before this run wrote it" + (
                " (%s)" % ", ".join("%s=%s" % kv for kv in previous.items()) if previous else "")
    return "the env file changed by someone else since this run wrote it"


def undo_state(journal, probe):
    """One line for a person: where the data, the env file and the app stand now."""
    journal, probe = journal or {}, probe or {}
    entries = journal.get("entries") or []
    found = probe.get("databases") or {}
    holders = probe.get("holders")
    named = []
    for entry in entries:
        for name in ([entry.get("from"), entry.get("to")] if entry.get("step") == "db_rename" else
                     [entry.get("database")] if entry.get("step") == "db_drop" else []):
            if name and name not in named:
                named.append(name)
    parts = []
    if holders:
        parts.append("the data is in " + " and ".join(sorted(holders)))
    for name in named:
        if name not in found:
            parts.append("%s does not exist" % name)
        elif holders is not None and name not in holders:
            parts.append("%s exists, holding no data" % name)
        if name in found and not found[name]:
            parts.append("%s refuses connections" % name)
    env = _env_state(entries, (probe.get("env") or {}).get("sha256"))
    if env:
        parts.append(env)
    app = probe.get("app") or {}
    parts.append("the app " + ("is missing" if not app.get("exists") else
                               "is running" if app.get("running") else "is stopped"))
    if app.get("previous_exists"):
        parts.append("the container an interrupted recreate set aside is still there")
    return "; ".join(parts)


def _psql(names, statement):
    """psql in the database container as the login, over its local socket: never a password."""
    return ["docker", "exec", names.get("db") or "DB", "psql", "-U", names.get("user") or "postgres", "-d",
            "postgres", "-v", "ON_ERROR_STOP=1", "-c", statement]


def _rename_sql(name, target):
    return "ALTER DATABASE %s RENAME TO %s" % (_sql_ident(name), _sql_ident(target))


def _step_commands(step, names, recreated):
    """Shell commands doing one undo step by hand."""
    app, db, user = names.get("app") or "APP", names.get("db") or "DB", names.get("user") or "postgres"
    kind = step["do"]
    if kind == "stop_app":
        argv = [["docker", "stop", app]]
    elif kind == "allow":
        argv = [_psql(names, "ALTER DATABASE %s WITH ALLOW_CONNECTIONS true" % _sql_ident(step["database"]))]
    elif kind == "rename":
        argv = [_psql(names, _rename_sql(step["name"], step["target"]))]
    elif kind == "restore_db":
        return [shlex.join(["docker", "exec", db, "createdb", "-U", user, step["database"]]),
                shlex.join(["docker", "exec", "-i", db, "pg_restore", "-U", user, "--exit-on-error", "-d",
                            step["database"]]) + " < " + shlex.quote(step["backup"])]
    elif kind == "restore_env":
        argv = [["cp", "-p", step["backup"], step["file"]]]
    elif kind == "restore_container":
        argv = [["docker", "rm", "-f", app], ["docker", "rename", app + ".dbops-previous", app]]
    elif kind == "start_app":
        if recreated:
            return ["# %s took its env at creation: create it again with DB_NAME=%s (playbooks/rollback.yml "
                    "does it)" % (app, step["database"])]
        argv = [["docker", "start", app]]
    else:
        return []
    return [shlex.join(a) for a in argv]


def undo_by_hand(journal, probe, names=None):
    """What is left of an undo that failed, for the person who finishes it:
    {now, refusal, steps, commands} from the journal and the state probed after the failure.

    names: {app, db, user, health_url}. A database that took a name the undo needs is renamed aside
    first (to <name>_appeared), never dropped.
    """
    journal, names = journal or {}, names or {}
    now = undo_state(journal, probe)
    probe = dict(probe or {})
    refusal, commands, plan = "", [], None
    try:
        plan = plan_undo(journal, probe)
    except Refusal as exc:
        refusal = str(exc)
        if exc.aside:
            aside = exc.aside.encode("utf-8")[:63 - len("_appeared")].decode("utf-8", "ignore") + "_appeared"
            commands.append(shlex.join(_psql(names, _rename_sql(exc.aside, aside))))
            probe["databases"] = {k: v for k, v in (probe.get("databases") or {}).items() if k != exc.aside}
            try:
                plan = plan_undo(journal, probe)
            except Refusal:
                plan, commands = None, []
    except (KeyError, TypeError) as exc:
        refusal = "the journal is malformed (%s)" % exc
    recreated = any(e.get("step") == "app_recreate" for e in journal.get("entries") or [])
    steps = (plan or {}).get("steps") or []
    for step in steps:
        commands.extend(_step_commands(step, names, recreated))
    if commands and names.get("health_url") and steps and steps[-1]["do"] == "start_app":
        # The app takes a moment to answer once started.
        commands.append(shlex.join(["curl", "-fsS", "--retry", "60", "--retry-delay", "1",
                                    "--retry-all-errors", names["health_url"]]))
    return dict(now=now, refusal=refusal, steps=[s["do"] for s in steps],
                commands=commands if plan is not None else [])


def rollback_outcome(undos, failures, run_id, cause="", journal_dir=""):
    """How the undo of journal `run_id` went: {result, message, undone[, rollback][, now, by_hand]}.

    undos: {run_id: undo_plan} of the plans decided; failures: the run_failure list (a rollback's
    failure may carry `left`, the undo_by_hand of the state probed after it).
    """
    plan = (undos or {}).get(run_id)
    broke = [f for f in failures or [] if f.get("phase") == "rollback" and f.get("run_id") == run_id]
    if broke:
        failure = broke[0]
        left = next((f["left"] for f in broke if f.get("left")), None)
        message = (cause + " — " if cause else "") + "ROLLBACK FAILED at %s: %s" % (
            failure.get("task") or "?", first_line(failure.get("msg"), ""))
        if left is None:
            message += ". The journal %s (in %s) still holds every change; fix the cause and run " \
                "playbooks/rollback.yml, which resumes from the real state" % (run_id or "?", journal_dir)
            if plan is not None:
                message += ". By hand, remaining: " + ", ".join(s["do"] for s in plan.get("steps") or [])
            return dict(result="failed", message=message, undone=False)
        message += ". Now: %s. The journal %s (in %s) still holds every change. " % (
            left["now"], run_id or "?", journal_dir)
        commands = [c for c in left.get("commands") or [] if not c.startswith("#")]
        if commands:
            message += "To finish by hand: %s; or fix the cause and run playbooks/rollback.yml, which " \
                "resumes from the real state" % " && ".join(commands)
            comments = [c[2:] for c in left["commands"] if c.startswith("#")]
            if comments:
                message += " (" + "; ".join(comments) + ")"
        else:
            message += "Fix the cause, then run playbooks/rollback.yml, which resumes from the real state"
        return dict(result="failed", message=message, undone=False, now=left["now"],
                    by_hand=list(left.get("commands") or []))
    if plan is None:
        return dict(result="failed", message=cause, undone=False)
    if plan.get("steps"):
        return dict(result="rolled_back", rollback=plan, undone=True,
                    message=(cause + " — rolled back: " if cause else "rolled back: ") + undo_describe(plan))
    # Nothing to undo: the step failed before changing anything (a refusal).
    return dict(result="failed", message=cause, rollback=plan, undone=True)


def _at(entry):
    return datetime.datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%S.%fZ")


def _last(entries, step, **match):
    found = [e for e in entries if e.get("step") == step and all(e.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def journal_changes(entries):
    """One line per change the journal's entries record, in order."""
    lines = []
    for entry in entries or []:
        step = entry.get("step")
        if step in NOT_CHANGES:
            continue
        if step == "db_drop":
            lines.append("dropped the empty %s (backed up first)" % entry.get("database"))
        elif step == "db_rename":
            lines.append("renamed %s to %s" % (entry.get("from"), entry.get("to")))
        elif step == "env_write":
            lines.append("env file: " + ", ".join("%s=%s" % kv for kv in (entry.get("set") or {}).items()))
        elif step in ("app_start", "app_recreate"):
            env = entry.get("env") or {}
            lines.append("app %s on %s" % (entry.get("action") or "started", env.get("DB_NAME", "?")))
    return lines


def _standing(entries, rolled_back):
    """The entries whose change stands: all of them, or those before the last checkpoint when the
    run was undone back to it."""
    if not rolled_back:
        return entries
    marks = [i for i, e in enumerate(entries) if e.get("step") == "checkpoint"]
    return entries[:marks[-1]] if marks else []


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


def _failures_of(name, facts):
    """The failures every record filter starts from; `facts` must be the dict of the run's results."""
    if not isinstance(facts, dict):
        raise AnsibleFilterError("%s expects a dict of the run's results" % name)
    return facts.get("failures") or []


def _in_phase(failures, phase):
    """The failures noted in one phase of the run (tasks/failed.yml), first first."""
    return [f for f in failures if f.get("phase") == phase]


def consolidation_record(facts):
    """The record of one host's consolidate.yml run (dbops_run)."""
    failures = _failures_of("consolidation_record", facts)
    plan = facts.get("plan") or {}
    check = bool(facts.get("check_mode"))
    journal_dir = facts.get("journal_dir") or ""
    undos = facts.get("undos") or {}
    entries = (facts.get("journal") or {}).get("entries") or []
    migration = facts.get("migration") or {}
    record = dict(host=facts.get("host"), started_at=facts.get("started_at") or _now(), check_mode=check,
                  result="running", message="", changes=[])

    interrupted = facts.get("interrupted") or ""
    if interrupted:
        recovery = rollback_outcome(undos, failures, interrupted, journal_dir=journal_dir)
        if recovery["undone"]:
            record["recovered"] = "run %s was interrupted; %s" % (
                interrupted, undo_describe(recovery["rollback"]))
            record["rollback"] = recovery["rollback"]

    own = [f for f in failures if f.get("phase") != "rollback"]
    refused = _in_phase(own, "pre-check")
    if refused:
        record.update(result="failed", message="pre-check: " + (refused[0].get("msg") or "failed"))
    elif not facts.get("go", True):
        record.update(result="failed", message="held: another host failed its pre-check")
    elif own:
        cause = _cause(own[0])
        if check:
            record.update(result="failed", message=cause)
        else:
            outcome = rollback_outcome(undos, failures, facts.get("run_id") or "", cause, journal_dir)
            record.update(result=outcome["result"], message=outcome["message"])
            record.update((k, outcome[k]) for k in ("now", "by_hand") if k in outcome)
            if "rollback" in outcome:
                record["rollback"] = outcome["rollback"]
    elif facts.get("held"):
        record.update(result="failed", message="held: another host failed or was rolled back")

    record["changes"] = journal_changes(_standing(entries, record["result"] != "running"))
    if record["result"] == "running":
        record["result"] = "planned" if check else (
            "success" if facts.get("pending") or record["changes"] else "unchanged")

    window_end = _last(entries, "window", edge="close")
    window_start = _last(entries, "window", edge="open")
    if window_end and window_start:
        record["downtime_s"] = round((_at(window_end) - _at(window_start)).total_seconds(), 2)
    verify = _last(entries, "verify")
    backup = _last(entries, "backup", purpose="pre_consolidation")
    target_backup = _last(entries, "backup", purpose="dropped_empty_target")
    applied = migration.get("applied")
    record.update(
        finished_at=facts.get("finished_at") or _now(),
        source=plan.get("source", ""),
        target=plan.get("target", facts.get("target") or ""),
        plan=plan,
        counts_initial=facts.get("counts_initial") or {},
        counts_before=(verify or {}).get("counts_before") or {},
        counts_after=(verify or {}).get("counts_after") or {},
        backup=_pick((backup or {}).get("backup"), BACKUP_KEYS),
        migrations_applied=[m["name"] for m in applied] if applied is not None else [],
        migrations_adopted=migration.get("adopted") or [],
        migrations_pending=(migration.get("pending") or []) if check else [],
        target_backup=_pick((target_backup or {}).get("backup"), TARGET_BACKUP_KEYS),
        planned=consolidation_steps(plan, migration.get("pending") or [], bool(facts.get("repoint")),
                                    (facts.get("app_would") or "restart").replace("ed", "")) if check else [],
    )
    return record


def rollback_record(facts):
    """The record of one host's rollback.yml run (dbops_run, kind rollback)."""
    failures = _failures_of("rollback_record", facts)
    undos = facts.get("undos") or {}
    journal_dir = facts.get("journal_dir") or ""
    last = facts.get("last") or {}
    interrupted = facts.get("interrupted") or ""
    refused = _in_phase(failures, "pre-check")
    record = dict(host=facts.get("host"), started_at=facts.get("started_at") or _now(),
                  check_mode=bool(facts.get("check_mode")))
    if refused:
        result, message = "failed", "rollback: " + first_line(refused[0].get("msg"))
    elif interrupted:
        # The lock was left by a consolidation that died: taking it over undid that run.
        recovery = rollback_outcome(undos, failures, interrupted, journal_dir=journal_dir)
        result = "rolled_back"
        message = "run %s was interrupted; %s" % (interrupted, undo_describe(recovery.get("rollback") or {}))
        record["recovered"] = message
    elif not last or last.get("state") in ("undone", "rolled_back"):
        result = "unchanged"
        message = "nothing to roll back: " + ("no consolidation journal in %s" % journal_dir if not last
                                              else "run %s is %s" % (last.get("run_id"), last.get("state")))
    else:
        outcome = rollback_outcome(undos, failures, last.get("run_id"), journal_dir=journal_dir)
        result, message = outcome["result"], outcome["message"]
        record.update((k, outcome[k]) for k in ("now", "by_hand") if k in outcome)
        if "rollback" in outcome:
            record["rollback"] = outcome["rollback"]
        if outcome["undone"] and result == "failed":
            result = "unchanged"
            message = "nothing to roll back: run %s changed nothing that is still there" % last.get("run_id")
    plan = next((e["plan"] for e in last.get("entries") or []
                 if e.get("step") == "checkpoint" and "plan" in e), {})
    if record["check_mode"] and result == "rolled_back":
        # Nothing was undone: the message says what a real run would do.
        result, message = "planned", message.replace("rolled back: ", "would roll back: ", 1)
    record.update(
        result=result, message=message,
        finished_at=facts.get("finished_at") or _now(), kind="rollback", plan={}, changes=[],
        counts_initial={}, counts_before={}, counts_after={}, backup={}, migrations_applied=[],
        migrations_adopted=[], migrations_pending=[], source=plan.get("source", ""),
        target=plan.get("target", ""),
    )
    return record


def migrations_planned(result):
    """Every migration the run set out to apply, from the check or the apply result alike."""
    result = result or {}
    return [m["name"] for m in result.get("applied") or []] + list(result.get("pending") or [])


def migration_record(facts):
    """The record of one host's migrate.yml run (dbops_job, kind migrate)."""
    failures = _failures_of("migration_record", facts)
    check = bool(facts.get("check_mode"))
    job = dict(host=facts.get("host"), kind="migrate", started_at=facts.get("started_at"), check_mode=check,
               result="running", message="", pending=[])
    refused = _in_phase(failures, "pre-check")
    if refused:
        job.update(result="failed", message="pre-check: " + first_line(refused[0].get("msg")))
        return job
    result = facts.get("migration") or {}
    job.update(database=facts.get("database"), pending=migrations_planned(result),
               would_adopt=list(result.get("adopted") or []) + list(result.get("would_adopt") or []),
               already_applied=result.get("already_applied") or [], warnings=facts.get("warnings") or [])
    if not job["pending"]:
        job["result"] = "unchanged"
        return job
    backup = facts.get("backup") or {}
    if _ok(backup):
        job["backup"] = _pick(backup, MIGRATE_BACKUP_KEYS)
    failed = _in_phase(failures, "migrate")
    if failed:
        job.update(result="failed", pending=result.get("pending") or job["pending"],
                   message=first_line(failed[0].get("msg"), "migration failed")
                   + (" — the backup taken before is " + job["backup"]["path"] if "backup" in job else ""))
        return job
    job.update(result="planned" if check else "success", applied=result.get("applied") or [],
               adopted=result.get("adopted") or [], pending=(result.get("pending") or []) if check else [],
               lock_wait_ms=result.get("lock_wait_ms") or 0)
    return job


def restore_record(facts):
    """The record of one host's restore.yml run (dbops_job, kind restore)."""
    failures = _failures_of("restore_record", facts)
    check = bool(facts.get("check_mode"))
    job = dict(host=facts.get("host"), kind="restore", started_at=facts.get("started_at"), check_mode=check,
               result="running", message="")
    refused = _in_phase(failures, "pre-check")
    if refused:
        job.update(result="failed", target=facts.get("target") or "",
                   message="pre-check: " + first_line(refused[0].get("msg")))
        return job
    chosen = facts.get("backup") or {}
    job.update(backup_path=chosen.get("path"), database=chosen.get("database"),
               for_database=chosen.get("for_database"), purpose=chosen.get("purpose"),
               target=facts.get("target"), backup_taken_at=chosen.get("taken_at"),
               counts_manifest=chosen.get("row_counts"))
    failed = _in_phase(failures, "restore")
    if failed:
        job.update(result="failed", message=first_line(failed[0].get("msg"), "restore failed"))
        return job
    restored = facts.get("restored") or {}
    job.update(result="planned" if check else ("success" if restored.get("changed") else "unchanged"),
               counts_after=(facts.get("counts_after") or {}) if not check else {},
               verified=restored.get("verified") or {}, duration_s=restored.get("duration_s"),
               message=restored.get("msg") or "")
    return job


def report_base(record, report_dir="", kind=""):
    """Where a run's report files go, without extension: <dir>[/<kind>]/<host>-<start, compact>.

    The default directory is outside the installed collection ($XDG_STATE_HOME/qadhya.dbops/reports),
    so that upgrading the collection never removes reports.
    """
    record = record or {}
    if not report_dir:
        state = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
        report_dir = os.path.join(os.path.expanduser(state), "qadhya.dbops", "reports")
    stamp = str(record.get("started_at") or _now())[:19].replace(":", "").replace("-", "")
    return "%s/%s%s-%s" % (report_dir, kind + "/" if kind else "", record.get("host"), stamp)


class FilterModule:
    def filters(self):
        return {
            "run_failure": run_failure,
            "rollback_outcome": rollback_outcome,
            "undo_by_hand": undo_by_hand,
            "consolidation_record": consolidation_record,
            "rollback_record": rollback_record,
            "migrations_planned": migrations_planned,
            "migration_record": migration_record,
            "restore_record": restore_record,
            "report_base": report_base,
        }
