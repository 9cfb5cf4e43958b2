# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the run's outline: the planned steps, the row count changes, the backup's room."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.filter.consolidation import (
    backup_room,
    consolidation_steps,
    count_changes,
)


def test_a_check_run_lists_every_planned_step_in_order():
    plan = {"state": "pending", "source": "data", "target": "app", "configured_database": "app",
            "drop_target": True}
    steps = consolidation_steps(plan, ["001.sql"], repoint=True, app_action="recreate")
    assert steps == [
        "back up data (verified)",
        "apply 1 migration(s) to data: 001.sql",
        "point the app at its data: env DB_NAME app -> data, restart the app",
        "back up, then drop the empty app",
        "stop the app, end the sessions of data, rename it to app",
        "set the env file's DB_NAME data -> app",
        "recreate the app, wait for health, verify every table's rows",
    ]
    assert consolidation_steps({"state": "done"}) == []


def test_count_changes_names_only_the_tables_that_changed():
    assert count_changes({"a": 1, "b": 2}, {"a": 1, "b": 2}) == "rows 3 in 2 tables, equal before and after"
    assert count_changes({"a": 1}, {"a": 1, "s": 2}) == "rows 1 -> 3: s - -> 2"


def test_backup_room_applies_the_backups_own_rule_to_the_inventory():
    mb = 1024 * 1024
    info = {"databases": {"moncabinet": {"size_bytes": 60 * mb}},
            "backup_dir": {"path": "/backups", "free_bytes": 300 * mb}}
    assert backup_room(info, "moncabinet", 200)["ok"] is True
    room = backup_room(info, "moncabinet", 256)
    assert room["ok"] is False and room["need_mb"] == 316.0
    assert room["msg"].startswith("not enough free space in /backups: 300 MB free, need ~316 MB")
    # An unknown size (no CONNECT) counts as nothing but the margin, as db_backup would then see it.
    assert backup_room(info, "other", 256)["ok"] is True
    with pytest.raises(AnsibleFilterError, match="given backup_dir"):
        backup_room({"databases": {}}, "moncabinet")
