#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_journal
short_description: Open, read and close a run's undo journal and the host's run lock
version_added: 0.2.0
author: qadhya platform team (@qadhya)
description:
  - A playbook run that changes a host keeps an undo journal there - one private JSON file per
    run in O(dir), beside the backups. The modules that change things (M(qadhya.dbops.env_file),
    M(qadhya.dbops.app_container), M(qadhya.dbops.db_rename), M(qadhya.dbops.db_migrate)) append an
    entry to it just before each change, so a rollback, or a rerun after a crash, knows exactly what
    the run changed.
  - V(open) takes the host's run lock (C(run.lock) in O(dir)) and creates the journal.
    consolidate.yml, rollback.yml, backup.yml and migrate.yml take it, so no two of them run on one
    host at once. A lock held by a live run makes the module fail at once, naming that run (playbook,
    run id, since when, controller pid and host) and the fix; a lock left by a run that died
    (O(controller_pids), or O(holder_dead=true)) is taken over. When the dead run kept a journal to
    undo (a consolidation, a rollback), that journal is returned as RV(interrupted) so that it can be
    undone first - or, with O(undo_interrupted=false), the module fails naming that run and the
    playbooks that finish or undo it. A dead run with nothing to undo (O(undoable=false),
    a backup, a migration) has its journal closed V(failed) and nothing else. Either way the partial
    backup files the dead run left in O(sweep_dir) (those no process has open) are removed (RV(swept)).
  - V(status) reads the lock and the newest journal, changing nothing.
  - V(append) adds one entry (for example a checkpoint) to the journal of O(run_id).
  - V(close) sets the journal's final state and releases the lock if O(run_id) holds it.
  - V(read) returns one journal - the newest of a playbook (O(playbook)), or O(run_id)'s.
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
options:
  dir:
    description: Directory of the journals on the Docker host (created C(0700)).
    type: path
    required: true
  action:
    description: What to do.
    type: str
    required: true
    choices: [open, status, append, close, read]
  run_id:
    description:
      - The run. V(open) creates it when empty; V(append) and V(close) need it; V(read) reads it when given.
    type: str
  host:
    description: Inventory name of the host, recorded in the journal.
    type: str
  playbook:
    description: Playbook of the run (V(open)), or whose newest journal to read (V(read)).
    type: str
  meta:
    description: Facts about the run recorded in the journal's header (source, target, ...).
    type: dict
    default: {}
  controller:
    description: "Who runs it: C({host: <controller host name>, pid: <ansible-playbook pid>})."
    type: dict
    default: {}
  holder_dead:
    description: With V(open), take over a lock whose holder the caller found dead.
    type: bool
    default: false
  controller_pids:
    description:
      - With V(open), the process ids alive on the controller now (C(ps -A -o pid=) run there). A lock
        held from the same controller host (O(controller)'s C(host)) by a pid not among them was left
        by a run that died, and is taken over as with O(holder_dead=true). A lock held from another
        controller is never judged dead.
      - Lets one task both judge the holder and take the lock, with no V(status) before it.
    type: list
    elements: str
    version_added: 0.3.0
  undoable:
    description:
      - With V(open), whether this run's journal is one to undo after a crash. V(false) for a run that
        changes nothing a journal could undo (a backup writes a new file; migrations apply each in its
        own transaction); a lock it leaves when it dies is taken over with nothing to undo.
    type: bool
    default: true
    version_added: 0.3.0
  undo_interrupted:
    description:
      - With V(open) taking over a dead run's lock, whether this run may undo that run's journal
        (returned as RV(interrupted)). V(false) makes the module fail instead, naming the interrupted
        run and the fix (C(consolidate.yml) to finish it, C(rollback.yml) to undo it), since a scheduled
        backup must not roll back a switch on its own. A dead run with nothing to undo is taken over
        either way.
    type: bool
    default: true
    version_added: 0.3.0
  window_timeout:
    description:
      - With V(open), seconds to wait first for a switch still running on this host (an
        M(qadhya.dbops.app_switch) holding C(window.lock) in O(dir) after its ansible-playbook was killed
        in the downtime window, since the module goes on until it ends the window). The lock is judged, and
        a dead run's journal returned, only once that switch has ended; the module fails after this
        long, naming its process. V(0) does not wait.
    type: int
    default: 600
    version_added: 0.3.0
  sweep_dir:
    description:
      - With V(open) taking over a dead run's lock, the directory where that run may have left a
        partial backup file (C(.<name>.partial-<random>), the name M(qadhya.dbops.db_backup) writes
        a dump under until it is complete). Those no process has open are removed; a backup running
        now keeps its file. Without the right to read every process's open files, only partials a day
        old are removed.
      - Empty means the parent of O(dir), where the playbooks keep the backups.
    type: path
    version_added: 0.2.0
  entry:
    description: With V(append), the entry; it needs a C(step) key.
    type: dict
  state:
    description: With V(close), the run's final state.
    type: str
    choices: [running, success, unchanged, rolled_back, failed, undone, planned]
  states:
    description: With V(read) of a playbook's newest journal, only journals in one of these states count.
    type: list
    elements: str
    choices: [running, success, unchanged, rolled_back, failed, undone, planned]
"""

EXAMPLES = r"""
- name: Take the run lock and open the journal
  qadhya.dbops.run_journal:
    dir: /var/backups/qadhya/journal
    action: open
    host: "{{ inventory_hostname }}"
    playbook: consolidate
    meta: {source: moncabinet, target: qadhya}
  register: journal

- name: Close it
  qadhya.dbops.run_journal:
    dir: /var/backups/qadhya/journal
    action: close
    run_id: "{{ journal.run_id }}"
    state: success
"""

RETURN = r"""
run_id:
  description: The run's id (also the journal file's name without C(.json)).
  returned: success
  type: str
  sample: 20261201T220501-3f2a
path:
  description: The journal file.
  returned: success
  type: str
journal:
  description: The journal document (header and C(entries)).
  returned: success
  type: dict
lock:
  description: The lock's content (run_id, controller, started_at) when one is held, else empty.
  returned: always
  type: dict
interrupted:
  description:
    - With V(open) after a dead run, that run's journal to undo (empty when there was none, or when
      that run had nothing to undo).
  returned: when action is open
  type: dict
swept:
  description: With V(open) after a dead run, the partial backup files it left, removed.
  returned: when action is open
  type: list
  elements: str
  version_added: 0.2.0
window_waited_s:
  description: With V(open), how long a switch still running held C(window.lock) (see O(window_timeout)).
  returned: when action is open
  type: float
  version_added: 0.3.0
"""

import contextlib
import fcntl
import json
import os
import secrets
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    JOURNAL_VERSION,
    LOCK_NAME,
    WINDOW_LOCK_NAME,
    JournalError,
    append,
    create_exclusive,
    orphan_partials,
    read_journal,
    utc_now,
    wait_window_idle,
    write_json_atomic,
)


STATES = ["running", "success", "unchanged", "rolled_back", "failed", "undone", "planned"]


class RunJournal:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.dir = self.params["dir"]
        self.lock_path = os.path.join(self.dir, LOCK_NAME)

    def path_of(self, run_id):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise JournalError("run_id %r is not a journal name" % run_id)
        return os.path.join(self.dir, run_id + ".json")

    def lock(self):
        try:
            with open(self.lock_path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise JournalError("cannot read the run lock %s: %s; remove it once no run of ours is in "
                               "progress on this host" % (self.lock_path, exc)) from None

    def journals(self):
        """Journal documents in O(dir), newest first (names sort by their start time)."""
        if not os.path.isdir(self.dir):
            return []
        names = sorted((n for n in os.listdir(self.dir) if n.endswith(".json")), reverse=True)
        found = []
        for name in names:
            try:
                found.append(read_journal(os.path.join(self.dir, name)))
            except JournalError:
                continue
        return found

    def newest(self, playbook=None, states=None):
        for document in self.journals():
            if (not playbook or document.get("playbook") == playbook) and \
                    (not states or document.get("state") in states):
                return document
        return {}

    def journal_of(self, lock):
        """The journal of the run holding `lock`, or {} when it cannot be read."""
        with contextlib.suppress(JournalError):
            return read_journal(self.path_of(lock.get("run_id")))
        return {}

    def describe(self, lock, journal=None):
        controller = lock.get("controller") or {}
        # A lock written before 0.3.0 does not name its playbook: its journal does.
        playbook = lock.get("playbook") or (journal if journal is not None else self.journal_of(lock)).get(
            "playbook")
        return "run %s%s started %s by pid %s on %s" % (
            lock.get("run_id", "?"), " of %s.yml" % playbook if playbook else "", lock.get("started_at", "?"),
            controller.get("pid", "?"), controller.get("host", "?"))

    def holder_is_dead(self, lock):
        if self.params["holder_dead"]:
            return True
        pids = self.params.get("controller_pids")
        holder = lock.get("controller") or {}
        pid = str(holder.get("pid") or "").strip()
        if pids is None or not pid or not holder.get("host"):
            return False
        # The pid is judged only on the controller that noted it: another machine's pids say nothing.
        return holder["host"] == (self.params["controller"] or {}).get("host") and \
            pid not in {str(p).strip() for p in pids}

    def rerun(self):
        return "rerun %s.yml" % self.params["playbook"] if self.params.get("playbook") else "rerun"

    # -- actions -----------------------------------------------------------

    def status(self):
        return dict(changed=False, lock=self.lock(), journal=self.newest(self.params.get("playbook")))

    @contextlib.contextmanager
    def deciding(self):
        """One open() at a time on this host reads the lock, judges it and writes it: two runs
        that find the same dead holder (a nightly backup and an operator's consolidation) never
        both take it over. Check mode writes nothing, so it has nothing to serialize."""
        if self.module.check_mode:
            yield
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            # A file system without flock keeps the lock file's own O_EXCL, as before.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def open(self):
        # A switch still running (its ansible-playbook killed in the window) ends its window first:
        # the lock is judged, and a dead run's journal returned to be undone, only once it no
        # longer changes.
        waited, timeout = 0.0, self.params.get("window_timeout") or 0
        if timeout > 0:
            waited, _holder = wait_window_idle(os.path.join(self.dir, WINDOW_LOCK_NAME), timeout)
        with self.deciding():
            result = self._open()
        result["window_waited_s"] = waited
        return result

    def _open(self):
        params = self.params
        held = self.lock()
        if held and not self.holder_is_dead(held):
            raise JournalError(
                "another run of qadhya.dbops is in progress on this host (%s); wait for it to finish, "
                "then %s — if it died, rerun from the same controller, or check and remove %s"
                % (self.describe(held), self.rerun(), self.lock_path))
        previous = self.journal_of(held) if held else {}
        if previous.get("state") != "running":
            previous = {}
        if previous.get("undoable", True) and previous and not params.get("undo_interrupted", True):
            raise JournalError(
                "%s was interrupted (its ansible-playbook is gone) and its changes are not undone: finish it "
                "with consolidate.yml or undo it with rollback.yml, then %s; this run changed nothing"
                % (self.describe(held, previous), self.rerun()))
        stamp = utc_now()[:19].replace("-", "").replace(":", "")
        run_id = params.get("run_id") or "%s-%s" % (stamp, secrets.token_hex(2))
        path = self.path_of(run_id)
        controller = dict(params["controller"] or {})
        controller.setdefault("host", socket.gethostname())
        document = dict(
            version=JOURNAL_VERSION, run_id=run_id, host=params.get("host") or "",
            playbook=params.get("playbook") or "", started_at=utc_now(), state="running",
            undoable=params.get("undoable", True), controller=controller, meta=params["meta"] or {},
            entries=[],
        )
        interrupted = previous if previous.get("undoable", True) else {}
        # A dead run's partial backup: never a backup, only a file in the way of the free space.
        orphans = orphan_partials(params.get("sweep_dir") or os.path.dirname(os.path.abspath(self.dir))) \
            if held else []
        # A journal is a run record, like a report: opening one is not a change to the system.
        result = dict(changed=bool(orphans) and not self.module.check_mode, run_id=run_id, path=path,
                      journal=document, lock=held, interrupted=interrupted, swept=orphans)
        if self.module.check_mode:
            return result
        for orphan in orphans:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(orphan)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        lock = dict(run_id=run_id, playbook=document["playbook"], controller=controller,
                    started_at=document["started_at"], journal=path)
        if held:
            write_json_atomic(self.lock_path, lock)
            # Nothing of a dead run with nothing to undo stays "running": it is over, and failed.
            if previous and not interrupted:
                previous.update(state="failed", finished_at=utc_now(), taken_over_by=run_id)
                write_json_atomic(self.path_of(previous["run_id"]), previous)
        elif not create_exclusive(self.lock_path, lock):
            raise JournalError("another run of qadhya.dbops took the run lock on this host at this very "
                               "moment (%s); wait for it to finish, then %s"
                               % (self.describe(self.lock()), self.rerun()))
        write_json_atomic(path, document)
        return result

    def append(self):
        entry = self.params.get("entry") or {}
        path = self.path_of(self.params.get("run_id"))
        if self.module.check_mode:
            return dict(changed=False, run_id=self.params["run_id"], path=path, lock=self.lock())
        written = append(path, entry)
        return dict(changed=False, run_id=self.params["run_id"], path=path, entry=written,
                    journal=read_journal(path), lock=self.lock())

    def close(self):
        params = self.params
        run_id = params.get("run_id")
        path = self.path_of(run_id)
        if not params.get("state"):
            raise JournalError("action=close needs state")
        lock = self.lock()
        if self.module.check_mode or not os.path.exists(path):
            return dict(changed=False, run_id=run_id, path=path, lock=lock)
        document = read_journal(path)
        document.update(state=params["state"], finished_at=utc_now())
        write_json_atomic(path, document)
        if lock.get("run_id") == run_id:
            os.unlink(self.lock_path)
            lock = {}
        # Journals are run records, like the reports: closing one is not a change to the system.
        return dict(changed=False, run_id=run_id, path=path, journal=document, lock=lock)

    def read(self):
        run_id = self.params.get("run_id")
        document = read_journal(self.path_of(run_id)) if run_id else self.newest(
            self.params.get("playbook"), self.params.get("states"))
        return dict(changed=False, run_id=document.get("run_id", ""), journal=document, lock=self.lock(),
                    path=self.path_of(document["run_id"]) if document else "")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            action=dict(type="str", required=True, choices=["open", "status", "append", "close", "read"]),
            run_id=dict(type="str"),
            host=dict(type="str"),
            playbook=dict(type="str"),
            meta=dict(type="dict", default={}),
            controller=dict(type="dict", default={}),
            holder_dead=dict(type="bool", default=False),
            controller_pids=dict(type="list", elements="str"),
            undoable=dict(type="bool", default=True),
            undo_interrupted=dict(type="bool", default=True),
            window_timeout=dict(type="int", default=600),
            sweep_dir=dict(type="path"),
            entry=dict(type="dict"),
            state=dict(type="str", choices=STATES),
            states=dict(type="list", elements="str", choices=STATES),
        ),
        required_if=[("action", "append", ("run_id", "entry")), ("action", "close", ("run_id", "state"))],
        supports_check_mode=True,
    )
    manager = RunJournal(module)
    try:
        result = getattr(manager, module.params["action"])()
    except (JournalError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
