# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the run lock shared by consolidate, rollback, backup and migrate (real files in tmp_path)."""

from __future__ import annotations

import json
import threading

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _journal as jn
from ansible_collections.qadhya.dbops.plugins.modules import run_journal as rj

CONTROLLER = {"host": "ctl", "pid": "100"}
# A later run on the same controller (pid 1) once the holder, pid 100, is gone.
AFTER_DEATH = dict(controller_pids=["1"], controller={"host": "ctl", "pid": "1"})


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict(dir=None, action="open", run_id=None, host="h", playbook="consolidate", meta={},
                           controller=dict(CONTROLLER), controller_pids=None, holder_dead=False,
                           undoable=True, undo_interrupted=True, entry=None, state=None, states=None,
                           sweep_dir=None)
        self.params.update(params)


def manager(tmp_path, check_mode=False, **params):
    return rj.RunJournal(FakeModule(check_mode=check_mode, dir=str(tmp_path / "journal"), **params))


def lock_of(tmp_path):
    return json.loads((tmp_path / "journal" / jn.LOCK_NAME).read_text())


def journal_of(tmp_path, run_id):
    return json.loads((tmp_path / "journal" / (run_id + ".json")).read_text())


def test_a_live_backup_refuses_a_consolidation_naming_playbook_run_since_and_pid(tmp_path):
    backup = manager(tmp_path, playbook="backup", undoable=False).open()
    assert lock_of(tmp_path)["playbook"] == "backup"
    with pytest.raises(jn.JournalError) as refused:
        manager(tmp_path, controller_pids=["1", "100"]).open()
    line = str(refused.value)
    assert "\n" not in line
    assert "in progress on this host (run %s of backup.yml started %s by pid 100 on ctl)" % (
        backup["run_id"], backup["journal"]["started_at"]) in line
    assert "wait for it to finish, then rerun consolidate.yml" in line
    assert lock_of(tmp_path)["run_id"] == backup["run_id"]


def test_a_lock_from_before_the_playbook_was_noted_names_it_from_the_journal(tmp_path):
    first = manager(tmp_path).open()
    lock = lock_of(tmp_path)
    del lock["playbook"]
    (tmp_path / "journal" / jn.LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(jn.JournalError, match="run %s of consolidate.yml started" % first["run_id"]):
        manager(tmp_path, playbook="backup").open()


def test_a_holder_pid_gone_from_this_controller_is_dead_another_controllers_never(tmp_path):
    first = manager(tmp_path).open()
    jn.append(first["path"], {"step": "app_stop"})
    # Still alive here: refused.
    with pytest.raises(jn.JournalError, match="in progress"):
        manager(tmp_path, controller_pids=["100", "200"], controller={"host": "ctl", "pid": "200"}).open()
    # Gone, but the lock was noted on another controller: its pids are not ours to judge.
    with pytest.raises(jn.JournalError, match="in progress"):
        manager(tmp_path, controller_pids=["200"], controller={"host": "other", "pid": "200"}).open()
    second = manager(tmp_path, controller_pids=["200"], controller={"host": "ctl", "pid": "200"}).open()
    assert second["interrupted"]["run_id"] == first["run_id"]
    assert lock_of(tmp_path)["run_id"] == second["run_id"]


@pytest.mark.parametrize("playbook", ["backup", "migrate"])
def test_a_dead_consolidation_is_not_undone_by_a_backup_or_migration_but_named(tmp_path, playbook):
    first = manager(tmp_path).open()
    jn.append(first["path"], {"step": "db_rename", "from": "a", "to": "b"})
    partial = tmp_path / ".a-20261201T000000Z.dump.partial-0123456789ab"
    partial.write_bytes(b"PGDMP half")
    before = sorted(p.name for p in (tmp_path / "journal").iterdir())
    for check_mode in (True, False):
        with pytest.raises(jn.JournalError) as refused:
            manager(tmp_path, check_mode=check_mode, playbook=playbook, undoable=False,
                    undo_interrupted=False, **AFTER_DEATH).open()
        line = str(refused.value)
        assert line.startswith("run %s of consolidate.yml started " % first["run_id"]), line
        assert "was interrupted" in line
        assert "finish it with consolidate.yml or undo it with rollback.yml" in line
        assert "then rerun %s.yml; this run changed nothing" % playbook in line
    # Nothing taken over, nothing swept, nothing closed.
    assert lock_of(tmp_path)["run_id"] == first["run_id"]
    assert sorted(p.name for p in (tmp_path / "journal").iterdir()) == before
    assert journal_of(tmp_path, first["run_id"])["state"] == "running" and partial.exists()


def test_a_dead_backup_is_taken_over_with_nothing_to_undo_by_any_playbook(tmp_path):
    dead = manager(tmp_path, playbook="backup", undoable=False).open()
    partial = tmp_path / ".a-20261201T000000Z.dump.partial-0123456789ab"
    partial.write_bytes(b"PGDMP half")
    taken = manager(tmp_path, **AFTER_DEATH).open()
    assert taken["interrupted"] == {} and taken["swept"] == [str(partial)] and not partial.exists()
    assert lock_of(tmp_path)["run_id"] == taken["run_id"]
    old = journal_of(tmp_path, dead["run_id"])
    assert old["state"] == "failed" and old["taken_over_by"] == taken["run_id"]
    # The same for a backup that finds a dead backup's lock (undo refused or not).
    manager(tmp_path, run_id=taken["run_id"], action="close", state="success").close()
    again = manager(tmp_path, playbook="backup", undoable=False).open()
    after = manager(tmp_path, playbook="backup", undoable=False, undo_interrupted=False, **AFTER_DEATH).open()
    assert after["interrupted"] == {} and journal_of(tmp_path, again["run_id"])["state"] == "failed"


def test_a_dead_backup_in_check_mode_is_seen_and_nothing_written(tmp_path):
    dead = manager(tmp_path, playbook="backup", undoable=False).open()
    planned = manager(tmp_path, check_mode=True, **AFTER_DEATH).open()
    assert planned["interrupted"] == {} and planned["lock"]["run_id"] == dead["run_id"]
    assert lock_of(tmp_path)["run_id"] == dead["run_id"]
    assert journal_of(tmp_path, dead["run_id"])["state"] == "running"


def test_rollback_reads_the_newest_consolidation_never_a_later_backup(tmp_path):
    consolidation = manager(tmp_path, run_id="20261201T010000-aaaa").open()
    manager(tmp_path, run_id=consolidation["run_id"], action="close", state="success").close()
    backup = manager(tmp_path, run_id="20261202T023000-bbbb", playbook="backup", undoable=False).open()
    manager(tmp_path, run_id=backup["run_id"], action="close", state="success").close()
    newest = manager(tmp_path, action="read", playbook="consolidate",
                     states=["success", "failed", "rolled_back", "undone"]).read()
    assert newest["run_id"] == consolidation["run_id"]
    assert journal_of(tmp_path, backup["run_id"])["undoable"] is False


def test_two_runs_finding_the_same_dead_holder_never_both_take_it_over(tmp_path, monkeypatch):
    manager(tmp_path, playbook="backup", undoable=False).open()  # its holder, pid 100, is gone
    first = manager(tmp_path, **AFTER_DEATH)
    second = manager(tmp_path, playbook="backup", undoable=False, controller_pids=["1", "2"],
                     controller={"host": "ctl", "pid": "2"})
    outcome = {}

    def open_second():
        try:
            outcome["second"] = second.open()
        except jn.JournalError as exc:
            outcome["second"] = exc

    judge = rj.RunJournal.journal_of

    def judging(self, lock):
        # While the first run judges the dead holder, the second one tries too.
        if self is first and "thread" not in outcome:
            outcome["thread"] = threading.Thread(target=open_second)
            outcome["thread"].start()
            outcome["thread"].join(0.5)
            outcome["waited"] = outcome["thread"].is_alive()
        return judge(self, lock)

    monkeypatch.setattr(rj.RunJournal, "journal_of", judging)
    taken = first.open()
    outcome["thread"].join(10)
    assert outcome["waited"], "the second run decided while the first one was deciding"
    assert lock_of(tmp_path)["run_id"] == taken["run_id"]
    # The second saw the first's lock, its holder alive: refused, naming it.
    assert isinstance(outcome["second"], jn.JournalError)
    assert "in progress on this host (run %s of consolidate.yml" % taken["run_id"] in str(outcome["second"])
