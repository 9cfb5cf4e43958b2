#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_switch
short_description: The downtime window in one call - stop the app, rename its database, write its env, start
version_added: 0.2.0
author: qadhya platform team (@qadhya)
description:
  - Moves an app from database O(name) to O(target) with the least downtime a safe switch allows. Everything
    that can be done before the app stops is done first, changing nothing - the env file is read and
    its new text computed, the database connection opened and the rename rehearsed (target empty,
    no prepared transaction, every session ours to end), the container inspected and its start planned
    (a Compose service's dry run, a recreate's refusals). Then the window is only the switch - stop,
    rename, env write, start - and it closes as soon as the app answers HTTP 200 on O(health_url).
  - It runs the same code as the modules of each step (M(qadhya.dbops.app_container),
    M(qadhya.dbops.db_rename), M(qadhya.dbops.env_file)) and writes the same undo journal entries, each
    just before its change (C(app_stop), C(db_block), C(db_drop), C(db_rename), C(env_write),
    C(app_start) or C(app_recreate)), between a C(window) entry with C(edge=open) and one with
    C(edge=close); a crash between any two steps is undone from the journal as when the steps ran as
    separate tasks.
  - The last word before the rename, with the app stopped, is every table's exact row count and content
    checksum (C(rows:sum) of a hash of each row, as M(qadhya.dbops.db_info)'s C(checksum_tables)), taken
    in one scan per table. The rename is catalog-only; the module proves it inside the window by finding
    the same database OID under O(target). The caller compares the checksums after the start (the
    consolidation's verification), where a difference names the tables the app has written since.
  - Inside the window the app is judged ready by the module's own probe - the container running and
    O(health_url) answering 200, polled every 50 ms - not by Docker's health status, whose first check
    runs only a whole healthcheck interval after the start (unless the image sets a start period and a
    start interval). When the container has a healthcheck (and O(wait_healthy=true)), Docker's own
    C(healthy) is awaited once the window has closed, still inside this call, so that the caller's
    success still means healthy; a failure there fails the module (and the caller rolls back).
  - While it runs, the module holds an exclusive lock on O(lock_file). A run of the consolidation whose
    C(ansible-playbook) was killed can leave this process running on the Docker host until its window
    ends; O(state=idle) waits for that lock, so that the next run undoes or finishes the switch only once
    this process has stopped changing things.
options:
  state:
    description:
      - V(switched) runs the switch (nothing to do when O(name) is already gone and O(target) serves).
      - V(idle) changes nothing; it waits until no switch holds O(lock_file) (up to O(idle_timeout)
        seconds) and says whether one did.
    type: str
    choices: [switched, idle]
    default: switched
  lock_file:
    description:
      - File whose exclusive lock (C(flock)) the switch holds while it runs. Defaults to C(window.lock)
        beside O(journal).
      - Required for O(state=idle) when O(journal) is not given.
    type: path
  idle_timeout:
    description: With O(state=idle), seconds to wait for a running switch to end before failing.
    type: int
    default: 600
  app_container:
    description: Name of the app container (it must exist).
    type: str
  env:
    description:
      - "Values the env file and the running app must have after the switch, for example
        C({DB_NAME: qadhya})."
      - Values of secret-looking keys are masked in every result and journal entry.
    type: dict
    default: {}
  env_file:
    description: The app's env file on the Docker host; it must exist.
    type: path
  env_backup:
    description: Keep a copy of the old env file, C(<path>.<pid>.<date>@<time>~), before writing it.
    type: bool
    default: true
  env_assume:
    description:
      - In check mode only, keys the env file is taken to hold already (an earlier edit of the same run
        that check mode only planned), so that the change and diff shown are the ones a real run makes.
    type: dict
    default: {}
  strategy:
    description: As in M(qadhya.dbops.app_container) - V(auto), V(restart) or V(recreate).
    type: str
    default: auto
    choices: [auto, restart, recreate]
  health_url:
    description:
      - URL that must answer HTTP 200 (and, when its JSON has a C(database) key, name the C(DB_NAME) of
        O(env)) before the window closes. Empty means Docker's health (or running) closes it.
    type: str
  health_timeout:
    description:
      - Seconds, from the start, for the app to serve; and again for Docker's health after the window.
    type: int
    default: 60
  wait_healthy:
    description: Await Docker's C(healthy) status (after the window) when the container has a healthcheck.
    type: bool
    default: true
  name:
    description: The database the app's data is in now (the source of the rename).
    type: str
  target:
    description: The name the data must end under.
    type: str
  drop_empty_target:
    description: Drop an existing, empty O(target) before the rename (never one with rows).
    type: bool
    default: false
  target_backup:
    description: The verified backup of the empty O(target), recorded with its drop for a rollback.
    type: path
  terminate_timeout:
    description: Seconds to wait for the remaining sessions of the databases to end once signalled.
    type: float
    default: 10
  lock_wait_timeout:
    description:
      - Seconds the counts wait for another session's lock before the module stops; the failure names
        the sessions holding it.
    type: float
    default: 5
  verify:
    description:
      - Once the app is back (answering 200), count and checksum every table of O(target) again, one
        scan each in one snapshot, with the app serving, while Docker's own health is still awaited;
        journaled as a C(verify) entry beside the last word taken before the rename, and returned as
        RV(verified).
      - The proof that the app runs on the data it had; the caller judges it (a table of the last word
        missing is a loss; rows changed since are the app's own writes).
    type: bool
    default: true
extends_documentation_fragment:
  - qadhya.dbops.app
  - qadhya.dbops.connection
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.DIFF
  - qadhya.dbops.attributes.JOURNAL
notes:
  - Supports check mode - every preparation runs (reads, the rename's rehearsal, the start's plan) and
    RV(planned) lists the steps a real run takes; nothing is stopped, renamed, written or started.
  - With C(--diff), the env file's change is shown once, secret-looking values masked.
  - A failure message starts with the step that failed (C(Stop the app), C(Rename the database),
    C(Write <env file>), C(Start the app), C(Docker health)); the result still holds what was done and
    RV(journal_entries) what was journaled.
  - The connection user needs to own the databases (or be superuser), plus superuser or
    C(pg_signal_backend) to end other sessions; the module runs where the Docker Engine socket is.
seealso:
  - module: qadhya.dbops.app_container
  - module: qadhya.dbops.db_rename
  - module: qadhya.dbops.env_file
  - module: qadhya.dbops.run_journal
"""

EXAMPLES = r"""
- name: Switch the app to the consolidated database, in one call
  qadhya.dbops.app_switch:
    app_container: qadhya-nextjs
    env_file: /opt/moncabinet/.env
    env:
      DB_NAME: qadhya
    health_url: http://127.0.0.1:3000/api/health
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    name: moncabinet
    target: qadhya
    drop_empty_target: true
    journal: /var/backups/qadhya/journal/20260211T101500Z-lab1.json
  register: switch
  no_log: true

- name: Wait until no switch of an interrupted run is still running on the host
  qadhya.dbops.app_switch:
    state: idle
    lock_file: /var/backups/qadhya/journal/window.lock
"""

RETURN = r"""
window:
  description:
    - The downtime window - C(opened_at) and C(closed_at) (UTC, the times of its two journal entries,
      those the run report measures) and C(downtime_s) between them.
  returned: when the switch ran (not in check mode)
  type: dict
  sample:
    opened_at: "2026-02-11T10:15:00.120000Z"
    closed_at: "2026-02-11T10:15:00.910000Z"
    downtime_s: 0.79
timings:
  description: Seconds since the window opened at which each step ended (C(stop), C(rename), C(env_write),
    C(start), C(serving), C(closed)) and, after it, C(verified) and C(docker_healthy); C(prepare) is the
    time before it.
  returned: always
  type: dict
  sample: {"prepare": 0.21, "stop": 0.24, "rename": 0.31, "env_write": 0.32, "start": 0.41, "serving": 0.78}
proof:
  description:
    - C(row_counts) and C(checksums) of every table of O(name), taken with the app stopped just before
      the rename (one scan per table), and C(oid), the database's OID found under O(target) after it.
  returned: when the rename ran
  type: dict
  sample:
    row_counts: {"knowledge_base": 580}
    checksums: {"knowledge_base": "580:-123456"}
    oid: 16390
verified:
  description:
    - The C(verify) entry journaled after the window (O(verify)) - C(oid), C(counts_before) and
      C(checksums_before) (the last word, as in RV(proof)), C(counts_after) and C(checksums_after) (every
      table of O(target) once the app is back).
  returned: when the rename ran and O(verify=true)
  type: dict
  sample:
    oid: 16390
    counts_before: {"knowledge_base": 580}
    counts_after: {"knowledge_base": 581}
    checksums_before: {"knowledge_base": "580:-123456"}
    checksums_after: {"knowledge_base": "581:-123999"}
planned:
  description: The steps of the switch, in order, as a real run takes them (what check mode lists).
  returned: always
  type: list
  elements: str
  sample: ["stop qadhya-nextjs", "end 1 session(s) and rename 'moncabinet' to 'qadhya'",
           "env file: DB_NAME=qadhya", "start qadhya-nextjs"]
app:
  description: The start's result, as M(qadhya.dbops.app_container) returns it (strategy, action, ...).
  returned: always
  type: dict
rename:
  description: The rename's result, as M(qadhya.dbops.db_rename) returns it (renamed, actions, ...).
  returned: always
  type: dict
env:
  description: The env file's result, as M(qadhya.dbops.env_file) returns it (changes, lines, ...).
  returned: always
  type: dict
journal_entries:
  description: The journal entries this call wrote, in order, as written (with their time stamps).
  returned: always
  type: list
  elements: dict
waited_s:
  description: With O(state=idle), how long a running switch held the lock.
  returned: when state=idle
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connection_argument_spec,
    require_psycopg2,
    resolve_host,
)
from ansible_collections.qadhya.dbops.plugins.module_utils import _container as ct
from ansible_collections.qadhya.dbops.plugins.module_utils._engine_api import DockerAPI, DockerAPIError
from ansible_collections.qadhya.dbops.plugins.module_utils._env_file import EnvFileError, EnvWrite
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line
from ansible_collections.qadhya.dbops.plugins.module_utils._inventory import Connector, InventoryError
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    WINDOW_LOCK_NAME,
    JournalError,
    ModuleJournal,
    WindowBusy,
    hold_window,
    journal_argument_spec,
    utc_now,
    wait_window_idle,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._rename import (
    DB_ERRORS,
    RenameError,
    Renamer,
    TableCounter,
)

STEP_ERRORS = (ct.ContainerError, DockerAPIError, EnvFileError, InventoryError, RenameError,
               JournalError) + DB_ERRORS


class StepFailed(Exception):
    """One step failed; the message starts with the step's name."""


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        state=dict(type="str", default="switched", choices=["switched", "idle"]),
        lock_file=dict(type="path"),
        idle_timeout=dict(type="int", default=600),
        app_container=dict(type="str"),
        env=dict(type="dict", default={}),
        env_file=dict(type="path"),
        env_backup=dict(type="bool", default=True),
        env_assume=dict(type="dict", default={}),
        name=dict(type="str"),
        target=dict(type="str"),
        drop_empty_target=dict(type="bool", default=False),
        target_backup=dict(type="path"),
        terminate_timeout=dict(type="float", default=10.0),
        lock_wait_timeout=dict(type="float", default=5.0),
        verify=dict(type="bool", default=True),
        **ct.container_argument_spec()
    )
    spec.update(journal_argument_spec())
    return spec


def lock_path(params):
    if params.get("lock_file"):
        return params["lock_file"]
    if params.get("journal"):
        return os.path.join(os.path.dirname(params["journal"]), WINDOW_LOCK_NAME)
    return None


def wait_idle(module):
    """state=idle: wait until no switch holds the lock file."""
    path = lock_path(module.params)
    if not path:
        module.fail_json(msg="state=idle needs lock_file (or journal)")
    try:
        waited, held_by = wait_window_idle(path, module.params["idle_timeout"])
    except WindowBusy as exc:
        module.fail_json(msg=str(exc))
    return dict(changed=False, waited_s=waited, held_by=held_by)


class Switch:
    """Prepare, then the window: stop, rename, env write, start; then Docker's own health."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode
        self.journal = ModuleJournal(module)
        self.clock = time.monotonic
        self.timings = {}
        self.opened = None
        self.result = dict(changed=False, planned=[], app={}, rename={}, env={}, timings=self.timings,
                           journal_entries=self.journal.written)

    def _mark(self, key):
        self.timings[key] = round(self.clock() - self.opened, 3)

    def _container(self, state, check_mode):
        params = dict(self.params, name=self.params["app_container"], state=state,
                      env=self.params["env"] if state == "started" else {})
        return ct.AppContainer(params, self.api, ct.HealthProbe(self.params["validate_certs"]),
                               check_mode=check_mode, journal=self.journal,
                               docker_cli=ct.DockerCLI(self.module, self.params.get("docker_host")))

    def _renamer(self, cur, check_mode):
        return Renamer(cur, self.counter.tables, check_mode=check_mode,
                       terminate_timeout=self.params["terminate_timeout"], count_source=not check_mode,
                       journal=self.journal, target_backup=self.params.get("target_backup"),
                       last_word=self.counter.last_word)

    def _step(self, name, func):
        try:
            return func()
        except STEP_ERRORS as exc:
            raise StepFailed("%s: %s" % (name, first_line(exc))) from None

    def _window_edge(self, edge, **details):
        entry = self.journal("window", edge=edge, **details)
        return (entry or {}).get("at") or utc_now()

    def run(self):
        params = self.params
        started = self.clock()
        self.api = DockerAPI(params.get("docker_host"))
        self.counter = TableCounter(Connector(params, self.host, lock_timeout=params["lock_wait_timeout"]),
                                    params["lock_wait_timeout"])
        conn = Connector(params, self.host).open(params["maintenance_db"], autocommit=True)
        try:
            with conn.cursor() as cur:
                return self._run(cur, started)
        finally:
            self.counter.close()
            conn.close()

    def _run(self, cur, started):
        params = self.params
        env_name = "Write %s" % params["env_file"]
        # -- prepare: read, rehearse and plan; nothing changes --------------------------------------
        writer = EnvWrite(params["env_file"], params["env"], backup=params["env_backup"],
                          assume=params["env_assume"] if self.check_mode else None, diff=self.module._diff)
        self.result["env"] = self._step(env_name, writer.plan)
        rehearsal = self._step("Rename the database", lambda: self._renamer(cur, True).run(
            params["name"], params["target"], params["maintenance_db"],
            drop_empty_target=params["drop_empty_target"]))
        self.result["rename"] = rehearsal
        stopper = self._container("stopped", True)
        stop_plan = self._step("Stop the app", stopper.run)
        # The start planned on the container as it is: its refusals (a recreate's anonymous volumes or
        # moved image tag, a Compose project's other pending changes) come before the app stops.
        planner = self._container("started", True)
        planner.compose_checked = "compose" in stop_plan
        start_plan = self._step("Start the app", planner.run)
        self.result["app"] = start_plan
        planned = []
        if stop_plan.get("would") == "stopped":
            planned.append("stop %s" % params["app_container"])
        planned.extend(line.replace("would ", "", 1) for line in rehearsal.get("actions") or []
                       if line.startswith("would"))
        planned.extend("env file: %(key)s=%(after)s" % item for item in self.result["env"]["changes"])
        if start_plan.get("would"):
            # After the stop, a restart is a start.
            verb = {"recreated": "recreate", "restarted": "start", "started": "start"}[start_plan["would"]]
            planned.append("%s %s" % (verb, params["app_container"]))
        self.result["planned"] = planned
        if not (rehearsal.get("would_rename") or self.result["env"]["changed"] or start_plan.get("changed")):
            return self.result
        self.result["changed"] = True
        if self.check_mode:
            return self.result
        # The sessions the window counts through are opened now: the last word on the source, and
        # the proof that the target to drop is still empty.
        self._step("Rename the database", lambda: self.counter.preopen(params["name"]))
        if rehearsal.get("would_drop"):
            self._step("Rename the database", lambda: self.counter.preopen(params["target"]))
        self.timings["prepare"] = round(self.clock() - started, 3)

        # -- the window: the switch and nothing else ---------------------------------------------
        self.opened = self.clock()
        opened_at = self._window_edge("open")
        stopper = self._container("stopped", False)
        stopper.compose_checked = True
        self._step("Stop the app", stopper.run)
        self._mark("stop")
        renamed = self._step("Rename the database", lambda: self._renamer(cur, False).run(
            params["name"], params["target"], params["maintenance_db"],
            drop_empty_target=params["drop_empty_target"]))
        self.result["rename"] = renamed
        if renamed.get("row_counts") is not None:
            self.result["proof"] = dict(row_counts=renamed["row_counts"], oid=renamed.get("oid"),
                                        checksums=renamed.get("checksums") or {})
        self._mark("rename")
        self.result["env"] = self._step(env_name, lambda: writer.apply(self.journal))
        self._mark("env_write")
        starter = self._container("started", False)
        starter.defer_docker_health = True
        starter.compose_checked = "compose" in stop_plan or "compose" in start_plan
        self.result["app"] = starter.result
        self._step("Start the app", starter.run)
        self._mark("serving")
        self._mark("closed")
        closed_at = self._window_edge("close", timings=dict(self.timings))
        self.result["window"] = dict(opened_at=opened_at, closed_at=closed_at,
                                     downtime_s=self.timings["closed"])
        # -- after the window, before the caller's success: the count after, then Docker's own
        # health. The app serves already (HTTP 200); Docker's first check comes one --interval
        # after the start, so the count is taken while it is awaited, not after.
        if params["verify"] and "proof" in self.result:
            self._verify(self.result["proof"])
        self._step("Docker health", starter.wait_docker_health)
        self._mark("docker_healthy")
        return self.result

    def _verify(self, proof):
        """The count after, by the same definition as the last word, journaled before it is judged."""
        after = self._step("Verify", lambda: self.counter.last_word(self.params["target"]))
        entry = dict(oid=proof["oid"], counts_before=proof["row_counts"], checksums_before=proof["checksums"],
                     counts_after={table: value["rows"] for table, value in after.items()},
                     checksums_after={table: value["checksum"] for table, value in after.items()})
        self.journal("verify", **entry)
        self.result["verified"] = entry
        self._mark("verified")


def main():
    required = ("app_container", "env_file", "name", "target")
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[("state", "switched", required)])
    params = module.params
    if params["state"] == "idle":
        module.exit_json(**wait_idle(module))
    require_psycopg2(module)
    for key in ("health_timeout", "stop_timeout"):
        if params[key] < 0:
            module.fail_json(msg="%s must be 0 or more seconds, got %s" % (key, params[key]))
    if params["lock_wait_timeout"] <= 0 or params["terminate_timeout"] < 0:
        module.fail_json(msg="lock_wait_timeout must be more than 0 and terminate_timeout 0 or more seconds")
    switch = Switch(module)
    switch.host = resolve_host(module)
    lock = None
    path = None if module.check_mode else lock_path(params)
    if path:
        # Held until this process ends, also when it outlives the ansible-playbook that started it.
        try:
            lock = hold_window(path)
        except WindowBusy as exc:
            module.fail_json(msg=str(exc))
    try:
        result = switch.run()
    except StepFailed as exc:
        module.fail_json(msg=str(exc), **switch.result)
    except STEP_ERRORS as exc:
        module.fail_json(msg="before the switch: %s" % first_line(exc), **switch.result)
    finally:
        if lock is not None:
            lock.close()
    warnings = []
    for part in ("app",):
        warnings.extend((result.get(part) or {}).pop("warnings", []))
    for warning in warnings:
        module.warn(warning)
    diff = result["env"].pop("diff", None)
    if diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
