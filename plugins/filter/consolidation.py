# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: consolidation_plan
version_added: 0.1.0
author: qadhya platform team (@qadhya)
short_description: Decide the source and target of a database consolidation
description:
  - Takes the result of M(qadhya.dbops.db_info) and decides which database
    holds the app's data (the source), whether the consolidation onto the
    target name is still to do (C(pending)) or already done (C(done)).
  - When the situation is ambiguous or unsafe the plan's state is
    C(refused) and its reason is one line naming the problem and the fix,
    so the play can stop before anything is changed.
options:
  _input:
    description: The registered result of M(qadhya.dbops.db_info).
    type: dict
    required: true
  target:
    description: Name the data must end under.
    type: str
    required: true
  source:
    description: Database holding the data; empty means detect it.
    type: str
    default: ""
  ignore:
    description: Databases never taken as the source (the maintenance database).
    type: list
    elements: str
    default: [postgres]
"""

EXAMPLES = r"""
- name: Decide what to consolidate
  ansible.builtin.set_fact:
    plan: "{{ info | qadhya.dbops.consolidation_plan(target='qadhya') }}"
"""

RETURN = r"""
_value:
  description: The plan.
  type: dict
  contains:
    state:
      description:
        - C(pending) when the data still has to move to the target name,
          C(done) when it is there, C(refused) when it is unsafe to go on.
      type: str
    source:
      description: Database holding the data now.
      type: str
    target:
      description: Name the data ends under.
      type: str
    drop_target:
      description: Whether an empty target database exists and must be dropped before the rename.
      type: bool
    configured_database:
      description: Database the app's env file names, if it was read.
      type: str
    reason:
      description: One line explaining the decision.
      type: str
"""

from ansible.errors import AnsibleFilterError


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


class FilterModule:
    def filters(self):
        return {"consolidation_plan": consolidation_plan}
