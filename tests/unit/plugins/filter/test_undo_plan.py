# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for undo_plan: the journal in reverse, checked against the real state."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.filter.journal import undo_describe, undo_plan

BEFORE = "b" * 64
AFTER = "a" * 64
REPOINTED = {"step": "checkpoint", "expect": {"database": "moncabinet", "healthy": True}}
SWITCH = [
    REPOINTED,
    {"step": "app_stop", "container": "app"},
    {"step": "db_block", "databases": ["moncabinet", "qadhya"]},
    {"step": "db_drop", "database": "qadhya", "backup": "/b/qadhya.dump"},
    {"step": "db_rename", "from": "moncabinet", "to": "qadhya"},
    {"step": "env_write", "file": "/app/.env", "backup": "/app/.env.1~", "sha256_before": BEFORE,
     "sha256_after": AFTER},
    {"step": "app_start", "container": "app"},
]


def journal(entries, **meta):
    return {"run_id": "r1", "meta": meta, "entries": entries}


def probe(dbs, env_sha, running=True, previous=False):
    return {"databases": dbs, "env": {"sha256": env_sha},
            "app": {"exists": True, "running": running, "previous_exists": previous}}


def kinds(plan):
    return [step["do"] for step in plan["steps"]]


def test_after_a_whole_switch_everything_is_undone_in_reverse():
    plan = undo_plan(journal(SWITCH), probe({"postgres": True, "qadhya": True}, AFTER))
    assert plan["steps"] == [
        {"do": "stop_app"},
        {"do": "rename", "name": "qadhya", "target": "moncabinet"},
        {"do": "restore_db", "database": "qadhya", "backup": "/b/qadhya.dump"},
        {"do": "restore_env", "file": "/app/.env", "backup": "/app/.env.1~"},
        {"do": "start_app", "database": "moncabinet", "healthy": True},
    ]
    assert undo_describe(plan) == ("renamed qadhya back to moncabinet, restored the dropped qadhya, "
                                   "env file restored, app running healthy on moncabinet")


def test_failure_before_the_rename_goes_back_to_the_source_not_the_configured_target():
    # The app was repointed at its data (checkpoint), then the drop failed.
    entries = SWITCH[:4]
    plan = undo_plan(journal(entries, expect={"database": "qadhya", "healthy": False}),
                     probe({"moncabinet": True, "qadhya": True}, AFTER, running=False))
    assert plan["steps"] == [{"do": "start_app", "database": "moncabinet", "healthy": True}]


def test_a_change_journalled_but_never_made_needs_no_undo():
    # The entry is written just before the change: a crash between leaves the old state.
    plan = undo_plan(journal(SWITCH[:5]), probe({"moncabinet": True}, AFTER, running=False))
    assert kinds(plan) == ["restore_db", "start_app"]


def test_connections_left_blocked_are_allowed_first():
    plan = undo_plan(journal(SWITCH[:3]), probe({"moncabinet": False, "qadhya": True}, AFTER, running=False))
    assert kinds(plan) == ["allow", "start_app"]
    assert plan["steps"][0] == {"do": "allow", "database": "moncabinet"}


def test_env_file_changed_by_someone_else_is_refused():
    with pytest.raises(AnsibleFilterError, match="changed by someone else"):
        undo_plan(journal(SWITCH), probe({"qadhya": True}, "c" * 64))


def test_data_gone_from_both_names_is_refused():
    with pytest.raises(AnsibleFilterError, match="neither moncabinet nor qadhya exists"):
        undo_plan(journal(SWITCH), probe({"postgres": True}, AFTER))


def test_the_repoint_is_undone_only_before_its_checkpoint():
    entries = [
        {"step": "checkpoint", "expect": {"database": "qadhya", "healthy": False}},
        {"step": "env_write", "file": "/e", "backup": "/e~", "sha256_before": BEFORE, "sha256_after": AFTER},
        {"step": "app_start", "container": "app"},
    ]
    plan = undo_plan(journal(entries), probe({"moncabinet": True, "qadhya": True}, AFTER))
    assert kinds(plan) == ["stop_app", "restore_env", "start_app"]
    assert plan["steps"][-1] == {"do": "start_app", "database": "qadhya", "healthy": False}
    # After the checkpoint of the repoint, nothing of it is undone.
    plan = undo_plan(journal(entries + [REPOINTED]), probe({"moncabinet": True, "qadhya": True}, AFTER))
    assert plan["steps"] == []


def test_interrupted_recreate_puts_the_previous_container_back():
    entries = [REPOINTED, {"step": "app_recreate", "container": "app"}]
    plan = undo_plan(journal(entries), probe({"moncabinet": True}, BEFORE, running=False, previous=True))
    assert kinds(plan) == ["restore_container", "start_app"]


def test_migrations_are_kept_and_reported():
    entries = [REPOINTED, {"step": "migration", "database": "moncabinet", "applied": ["001.sql"]}]
    plan = undo_plan(journal(entries), probe({"moncabinet": True}, BEFORE))
    assert plan["kept_migrations"] == ["001.sql"] and plan["steps"] == []


def test_without_an_expected_database_it_refuses():
    with pytest.raises(AnsibleFilterError, match="which database the app used"):
        undo_plan(journal([{"step": "app_stop"}]), probe({"moncabinet": True}, BEFORE))


def test_an_app_stopped_before_the_run_is_left_stopped():
    entries = [{"step": "checkpoint", "expect": {"database": "gone", "healthy": False, "running": False}},
               {"step": "env_write", "file": "/e", "backup": "/e~", "sha256_before": BEFORE,
                "sha256_after": AFTER},
               {"step": "app_start", "container": "app"}]
    plan = undo_plan(journal(entries), probe({"copy": True}, AFTER, running=True))
    assert kinds(plan) == ["stop_app", "restore_env"]


def test_both_names_there_after_the_rename_are_told_apart_by_the_data():
    dbs = {"moncabinet": True, "qadhya": True}
    # The rename was already undone (and the emptied target restored): nothing left of it.
    plan = undo_plan(journal(SWITCH), dict(probe(dbs, BEFORE, running=False), holders=["moncabinet"]))
    assert kinds(plan) == ["start_app"]
    # A database took the old name while the data is under the new one: never undone blindly.
    with pytest.raises(AnsibleFilterError, match="a database named moncabinet .no data. appeared since"):
        undo_plan(journal(SWITCH), dict(probe(dbs, AFTER), holders=["qadhya"]))
    with pytest.raises(AnsibleFilterError, match="both moncabinet and qadhya hold data"):
        undo_plan(journal(SWITCH), dict(probe(dbs, AFTER), holders=["moncabinet", "qadhya"]))
