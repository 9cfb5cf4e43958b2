# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Decide how to undo a run from its journal and the real state (docs in the sidecar .yml files)."""

from ansible.errors import AnsibleFilterError

APP_STEPS = ("app_stop", "app_start", "app_recreate")


class Refusal(ValueError):
    """The real state is not one the rollback knows how to undo.

    `aside`: a database that took a name the undo needs, which a person must
    move aside (never dropped by us) before the undo can go on.
    """

    def __init__(self, message, aside=""):
        super().__init__(message)
        self.aside = aside


def _undoable(entries):
    """Entries after the last checkpoint (what the rollback undoes) and that checkpoint."""
    checkpoint = None
    tail = []
    for entry in entries:
        if entry.get("step") == "checkpoint":
            checkpoint, tail = entry, []
        else:
            tail.append(entry)
    return tail, checkpoint


def plan_undo(journal, probe):
    """Ordered undo steps for `journal` given `probe`, the state found now.

    probe: {databases: {name: accepts connections (bool)}, env: {sha256},
            app: {exists, running, previous_exists}[, holders: [name]]}
    holders, when given, are the databases (of those a rename of the journal
    names) that hold data: with both names of a rename there, it tells the
    rename already undone from a database that took the old name since.
    Each step: {do: stop_app|allow|rename|restore_db|restore_env|restore_container|start_app, ...}.
    Raises Refusal when the state is not one of those the journal explains.
    """
    entries, checkpoint = _undoable(journal.get("entries") or [])
    meta = journal.get("meta") or {}
    expect = dict((checkpoint or {}).get("expect") or meta.get("expect") or {})
    found = probe.get("databases") or {}
    dbs = dict(found)
    env = probe.get("env") or {}
    app = probe.get("app") or {}
    env_sha = env.get("sha256")
    holders = probe.get("holders")
    db_steps, env_steps, kept, notes = [], [], [], []
    mentioned = set()
    app_touched = False

    for entry in reversed(entries):
        step = entry.get("step")
        if step == "env_write":
            if env_sha == entry.get("sha256_after"):
                if not entry.get("backup"):
                    raise Refusal("the env file %s was changed without a backup; restore it by hand"
                                  % entry.get("file"))
                env_steps.append(dict(do="restore_env", file=entry["file"], backup=entry["backup"]))
                env_sha = entry.get("sha256_before")
            elif env_sha != entry.get("sha256_before"):
                raise Refusal("the env file %s was changed by someone else since this run wrote it "
                              "(neither its content before nor after); check it and restore it by hand "
                              "from %s" % (entry.get("file"), entry.get("backup") or "your own copy"))
        elif step == "db_rename":
            old, new = entry["from"], entry["to"]
            mentioned.update((old, new))
            if new in dbs and old not in dbs:
                db_steps.append(dict(do="rename", name=new, target=old))
                dbs[old] = dbs.pop(new)
            elif old not in dbs:
                raise Refusal("neither %s nor %s exists any more; the data is not where this run left it"
                              % (old, new))
            elif new in dbs and holders is not None and new in holders:
                if old in holders:
                    raise Refusal("both %s and %s hold data; which one the app must use is for a person "
                                  "to decide" % (old, new))
                raise Refusal("%s holds the data this run renamed from %s, and a database named %s (no "
                              "data) appeared since: the rename back needs its name; move it aside "
                              "(rename it), then roll back" % (new, old, old), aside=old)
        elif step == "db_drop":
            name = entry["database"]
            mentioned.add(name)
            if name not in dbs:
                if entry.get("backup"):
                    db_steps.append(dict(do="restore_db", database=name, backup=entry["backup"]))
                    dbs[name] = True
                else:
                    notes.append("the empty database %s was dropped and had no backup to restore" % name)
        elif step == "db_block":
            mentioned.update(entry.get("databases") or [])
        elif step in APP_STEPS:
            app_touched = True
        elif step == "migration":
            kept.extend(entry.get("applied") or [])
            kept.extend(entry.get("adopted") or [])
            partial = entry.get("partial") or {}
            if partial:
                notes.append("%s: its first %s statement(s) stay applied (it cannot run in a transaction)"
                             % (partial.get("name"), partial.get("statements_run")))

    if app.get("previous_exists"):
        app_touched = True
    allow = sorted(name for name in mentioned if name in found and not found[name])
    steps = []
    if app.get("previous_exists"):
        steps.append(dict(do="restore_container"))
    if (db_steps or env_steps or app_touched) and app.get("running"):
        steps.append(dict(do="stop_app"))
    steps.extend(dict(do="allow", database=name) for name in allow)
    steps.extend(db_steps)
    steps.extend(env_steps)
    if expect.get("running") is False:
        # The app was stopped before the run (a restore in progress): leave it so.
        if app.get("running") and not any(step["do"] == "stop_app" for step in steps):
            steps.insert(0, dict(do="stop_app"))
    elif steps or app_touched:
        if not expect.get("database"):
            raise Refusal("the journal does not say which database the app used before the run")
        steps.append(dict(do="start_app", database=expect["database"], healthy=bool(expect.get("healthy"))))
    return dict(steps=steps, back_to=expect.get("database", ""), healthy=bool(expect.get("healthy")),
                kept_migrations=kept, notes=notes, undone=len(entries))


def undo_plan(journal, probe):
    try:
        return plan_undo(journal or {}, probe or {})
    except Refusal as exc:
        raise AnsibleFilterError("cannot roll back automatically: %s" % exc) from None
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError("cannot roll back automatically: the journal is malformed (%s)"
                                 % exc) from None


def undo_describe(plan):
    """One line for a person: what the rollback did."""
    parts = []
    for step in plan.get("steps") or []:
        kind = step["do"]
        if kind == "rename":
            parts.append("renamed %s back to %s" % (step["name"], step["target"]))
        elif kind == "restore_db":
            parts.append("restored the dropped %s" % step["database"])
        elif kind == "restore_env":
            parts.append("env file restored")
        elif kind == "allow":
            parts.append("connections allowed on %s" % step["database"])
        elif kind == "restore_container":
            parts.append("previous container put back")
        elif kind == "start_app":
            parts.append("app running%s on %s" % (" healthy" if step["healthy"] else "", step["database"]))
    return ", ".join(parts) or "nothing to undo"


class FilterModule:
    def filters(self):
        return {"undo_plan": undo_plan, "undo_describe": undo_describe}
