# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Filters that decide and check a consolidation (docs in the sidecar .yml files)."""

from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import free_space_check


def _rows(db):
    return sum(int(t.get("rows") or 0) for t in (db.get("tables") or {}).values())


def _describe(db_name, db):
    tables = db.get("tables") or {}
    busiest = sorted(tables.items(), key=lambda kv: -int(kv[1].get("rows") or 0))[:3]
    detail = ", ".join("%s %d" % (name, int(t.get("rows") or 0)) for name, t in busiest)
    return "%s (%d rows: %s)" % (db_name, _rows(db), detail)


def plan_consolidation(info, target, source="", ignore=("postgres",)):
    """Pure decision; raises ValueError with a one-line message when unsafe."""
    if not target:
        raise ValueError("dbops_target_db is empty; set the name the data must end under")
    for option, name in (("dbops_target_db", target), ("dbops_source_db", source)):
        # PostgreSQL would silently cut a longer name and act on another one.
        if len((name or "").encode("utf-8")) > 63:
            raise ValueError("%s %r is %d bytes long; PostgreSQL names hold at most 63 bytes — choose a "
                             "shorter name" % (option, name, len(name.encode("utf-8"))))
    databases = info.get("databases") or {}
    holders = [d for d in (info.get("data_databases") or []) if d not in ignore]
    configured = info.get("configured_database")
    plan = dict(target=target, configured_database=configured, drop_target=False)
    existing = ", ".join(sorted(databases)) or "none"

    if source == target:
        source = ""
    if source:
        if source not in databases:
            if target in holders:
                reason = "'%s' is gone and '%s' holds the data: already consolidated" % (source, target)
                return dict(plan, state="done", source=target, reason=reason)
            raise ValueError("source database '%s' does not exist (existing: %s); fix dbops_source_db"
                             % (source, existing))
        if source not in holders:
            raise ValueError("source database '%s' holds no data; nothing to consolidate — "
                             "check dbops_source_db" % source)
    else:
        if not holders:
            raise ValueError("no database holds data (checked: %s); nothing to consolidate — check "
                             "dbops_db_container and the credentials" % existing)
        if holders == [target]:
            return dict(plan, state="done", source=target,
                        reason="'%s' already holds the data; nothing to consolidate" % target)
        others = [d for d in holders if d != target]
        if len(holders) > 1:
            found = "; ".join(_describe(d, databases[d]) for d in holders)
            raise ValueError("several databases hold data: %s; refusing to guess — set dbops_source_db "
                             "to the one the app must use" % found)
        source = others[0]

    if target in databases:
        if target in holders or _rows(databases[target]) > 0:
            raise ValueError("target database %s already holds data; consolidation refused, nothing was "
                             "changed — move that data away by hand or choose another dbops_target_db"
                             % _describe(target, databases[target]))
        plan["drop_target"] = True
    reason = "data in %s; rename it to '%s'" % (_describe(source, databases[source]), target)
    if plan["drop_target"]:
        reason += " after dropping the empty '%s'" % target
    if configured and configured != target:
        reason += "; the app is configured for '%s'" % configured
    return dict(plan, state="pending", source=source, reason=reason)


def consolidation_plan(info, target, source="", ignore=None):
    if not isinstance(info, dict):
        raise AnsibleFilterError("consolidation_plan expects the result of qadhya.dbops.db_info")
    try:
        return plan_consolidation(info, target, source or "", tuple(ignore or ("postgres",)))
    except ValueError as exc:
        return dict(state="refused", source=source or "", target=target, drop_target=False,
                    configured_database=info.get("configured_database"), reason=str(exc))


def row_counts(tables):
    """{table: {rows, method}} from db_info, as {table: rows}."""
    return {name: int((t or {}).get("rows") or 0) for name, t in (tables or {}).items()}


def row_count_diff(before, after):
    """One line per table whose row count changed, appeared or vanished."""
    before, after = before or {}, after or {}
    lines = []
    for table in sorted(set(before) | set(after)):
        if table not in after:
            lines.append("%s: missing after (had %d rows)" % (table, before[table]))
        elif table not in before:
            lines.append("%s: new table with %d rows" % (table, after[table]))
        elif before[table] != after[table]:
            lines.append("%s: %d rows before, %d after" % (table, before[table], after[table]))
    return lines


def consolidation_steps(plan, migrations=(), repoint=False, app_action="restart"):
    """The steps a run of the plan takes, in order, one short line each: what
    a --check run lists, so that a person sees every change before it is made."""
    plan = plan or {}
    if plan.get("state") != "pending":
        return []
    source, target = plan.get("source"), plan.get("target")
    steps = ["back up %s (verified)" % source]
    if migrations:
        steps.append("apply %d migration(s) to %s: %s" % (len(migrations), source, ", ".join(migrations)))
    if repoint:
        steps.append("point the app at its data: env DB_NAME %s -> %s, restart the app"
                     % (plan.get("configured_database"), source))
    if plan.get("drop_target"):
        steps.append("back up, then drop the empty %s" % target)
    steps.append("stop the app, end the sessions of %s, rename it to %s" % (source, target))
    steps.append("set the env file's DB_NAME %s -> %s" % (source, target))
    steps.append("%s the app, wait for health, verify every table's rows" % (app_action or "restart"))
    return steps


def count_changes(before, after):
    """'rows 591, equal' or 'rows 589 -> 591: _migrations 0 -> 1, ...' (tables that changed)."""
    before, after = before or {}, after or {}
    total_before, total_after = sum(before.values()), sum(after.values())
    if before == after:
        return "rows %d in %d tables, equal before and after" % (total_after, len(after))
    changed = ["%s %s -> %s" % (t, before.get(t, "-"), after.get(t, "-"))
               for t in sorted(set(before) | set(after)) if before.get(t) != after.get(t)]
    return "rows %d -> %d: %s" % (total_before, total_after, ", ".join(changed))


def backup_room(info, database, margin_mb=256):
    """Whether a backup of `database` fits in the backup directory db_info read: the same rule
    (free_space_check) as db_backup's own preflight."""
    info = info or {}
    room = info.get("backup_dir") or {}
    if "free_bytes" not in room:
        raise AnsibleFilterError("backup_room needs the db_info result of a call given backup_dir")
    size = ((info.get("databases") or {}).get(database) or {}).get("size_bytes") or 0
    return free_space_check(room["path"], int(room["free_bytes"]), size, margin_mb)


class FilterModule:
    def filters(self):
        return {
            "backup_room": backup_room,
            "consolidation_plan": consolidation_plan,
            "consolidation_steps": consolidation_steps,
            "count_changes": count_changes,
            "row_counts": row_counts,
            "row_count_diff": row_count_diff,
        }
