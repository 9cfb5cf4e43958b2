# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the undo journal file and the run lock (real files in tmp_path)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _journal as jn
from ansible_collections.qadhya.dbops.plugins.modules import run_journal as rj


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = dict(dir=None, action=None, run_id=None, host="h", playbook="consolidate", meta={},
                           controller={"host": "ctl", "pid": "1"}, holder_dead=False, entry=None,
                           state=None, journal=None, sweep_dir=None)
        self.params.update(params)


def manager(tmp_path, **params):
    return rj.RunJournal(FakeModule(dir=str(tmp_path / "journal"), **params))


def test_append_is_atomic_and_private(tmp_path):
    path = tmp_path / "j.json"
    jn.write_json_atomic(str(path), {"entries": []})
    jn.append(str(path), {"step": "db_rename", "from": "a", "to": "b"})
    doc = json.loads(path.read_text())
    assert [e["step"] for e in doc["entries"]] == ["db_rename"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["j.json"]  # no temp file left


def test_module_journal_is_silent_in_check_mode_and_fails_loudly_without_a_journal(tmp_path):
    silent = jn.ModuleJournal(FakeModule(check_mode=True, journal=str(tmp_path / "none.json")))
    assert silent("app_stop") is None
    loud = jn.ModuleJournal(FakeModule(journal=str(tmp_path / "none.json")))
    with pytest.raises(jn.JournalError, match="nothing more was changed"):
        loud("app_stop")


def test_open_takes_the_lock_and_a_second_run_fails_naming_the_first(tmp_path):
    first = manager(tmp_path).open()
    lock = json.loads((tmp_path / "journal" / jn.LOCK_NAME).read_text())
    assert lock["run_id"] == first["run_id"]
    assert stat.S_IMODE(os.stat(tmp_path / "journal").st_mode) == 0o700
    with pytest.raises(jn.JournalError, match="in progress on this host \\(run %s" % first["run_id"]):
        manager(tmp_path).open()


def test_a_dead_holder_is_taken_over_and_its_journal_returned(tmp_path):
    first = manager(tmp_path).open()
    jn.append(first["path"], {"step": "app_stop"})
    second = manager(tmp_path, holder_dead=True).open()
    assert second["interrupted"]["run_id"] == first["run_id"]
    assert [e["step"] for e in second["interrupted"]["entries"]] == ["app_stop"]
    assert json.loads((tmp_path / "journal" / jn.LOCK_NAME).read_text())["run_id"] == second["run_id"]


def test_close_releases_only_its_own_lock_and_read_finds_the_newest(tmp_path):
    first = manager(tmp_path, run_id="20260101T000000-aaaa").open()
    manager(tmp_path, run_id="20250101T000000-bbbb", state="failed").close()
    assert (tmp_path / "journal" / jn.LOCK_NAME).exists()
    closed = manager(tmp_path, run_id=first["run_id"], state="success").close()
    assert closed["journal"]["state"] == "success" and not closed["lock"]
    assert not (tmp_path / "journal" / jn.LOCK_NAME).exists()
    assert manager(tmp_path).read()["run_id"] == first["run_id"]


def test_check_mode_open_writes_nothing_but_still_sees_a_held_lock(tmp_path):
    result = rj.RunJournal(FakeModule(check_mode=True, dir=str(tmp_path / "journal"))).open()
    assert result["run_id"] and not (tmp_path / "journal").exists()
    manager(tmp_path).open()
    with pytest.raises(jn.JournalError, match="in progress"):
        rj.RunJournal(FakeModule(check_mode=True, dir=str(tmp_path / "journal"))).open()


@pytest.mark.parametrize("bad", ["../x", ".hidden", "", "a/b"])
def test_run_ids_cannot_leave_the_directory(tmp_path, bad):
    with pytest.raises(jn.JournalError, match="not a journal name"):
        manager(tmp_path).path_of(bad)


def test_a_dead_runs_partial_backup_is_swept_and_a_live_one_kept(tmp_path):
    manager(tmp_path).open()
    dead = tmp_path / ".moncabinet-20261201T000000Z.dump.partial-0123456789ab"
    dead.write_bytes(b"PGDMP half")
    live = tmp_path / ".moncabinet-20261201T000001Z.dump.partial-ba9876543210"
    other = tmp_path / ".notes.partial"  # not a name of ours
    other.write_text("x")
    with open(live, "wb"):  # a backup running now
        second = manager(tmp_path, holder_dead=True).open()
        assert second["swept"] == [str(dead)] and second["changed"]
        assert not dead.exists() and live.exists() and other.exists()
    # Check mode names them and removes nothing.
    live.unlink()
    dead.write_bytes(b"PGDMP half")
    assert manager(tmp_path, holder_dead=True, check_mode=True).open()["swept"] == [str(dead)]
    assert dead.exists()


def test_without_seeing_every_process_only_old_partials_are_orphans(tmp_path, monkeypatch):
    partial = tmp_path / ".x.dump.partial-0123456789ab"
    partial.write_bytes(b"PGDMP")
    monkeypatch.setattr(jn, "open_files", lambda proc="/proc": (set(), False))
    assert jn.orphan_partials(str(tmp_path)) == []
    assert jn.orphan_partials(str(tmp_path), now=os.stat(partial).st_mtime + 86400) == [str(partial)]


def test_the_window_wait_returns_once_no_switch_holds_the_lock(tmp_path):
    path = str(tmp_path / jn.WINDOW_LOCK_NAME)
    assert jn.wait_window_idle(path, 1) == (0.0, None)  # no switch ever ran here
    held = jn.hold_window(path)
    try:
        with pytest.raises(jn.WindowBusy) as raised:
            jn.wait_window_idle(path, 0.3, sleep=lambda s: None)
        assert "(process %d) still runs" % os.getpid() in str(raised.value)
        with pytest.raises(jn.WindowBusy, match="another switch .* is running"):
            jn.hold_window(path)
    finally:
        held.close()
    waited, holder = jn.wait_window_idle(path, 1)
    assert waited < 1 and holder is None
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
