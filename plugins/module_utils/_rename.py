# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rename a database from the maintenance database (private).

The switch runs inside the application's downtime window, so it is one
short sequence of statements on one autocommit connection:

1. block new connections to the source (and to the empty target to drop),
2. signal every remaining backend at once, then poll until they are gone,
3. drop the empty target, rename, allow connections again.

Any failure after step 1 allows connections again before reporting.
"""

from __future__ import annotations

import time

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    ident,
    psycopg2,
    sql,
    validate_identifier,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._catalog import (
    MIGRATIONS_TABLE,
    DEFAULT_SCHEMA,
    count_and_checksum,
    list_relations,
    table_key,
    tables_with_data,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line
from ansible_collections.qadhya.dbops.plugins.module_utils._inventory import InventoryError, inspect_database
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import JournalError
from ansible_collections.qadhya.dbops.plugins.module_utils._lock_wait import (
    holders_of,
    is_lock_timeout,
    lock_wait_message,
)

DB_ERRORS = (psycopg2.Error,) if psycopg2 is not None else ()
POLL_INTERVAL = 0.02

FIND_DATABASES = (
    "SELECT datname, datallowconn FROM pg_catalog.pg_database WHERE datname = ANY(%s)"
)
SIGNAL_SESSIONS = (
    "SELECT pid, pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
    " WHERE datname = ANY(%s) AND pid <> pg_catalog.pg_backend_pid()"
)
LIST_SESSIONS = (
    "SELECT pid, coalesce(application_name, ''), coalesce(usename::text, ''), datname"
    " FROM pg_catalog.pg_stat_activity"
    " WHERE datname = ANY(%s) AND pid <> pg_catalog.pg_backend_pid() ORDER BY pid"
)
# Sessions of `dbs` our login may not end (PostgreSQL 15 rules: a superuser ends
# anything; others never a superuser's session, and otherwise only sessions of
# a role they are a member of, or any with pg_signal_backend). Background
# processes (no role) are left to the server.
UNENDABLE_SESSIONS = (
    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), a.datname"
    " FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid"
    " WHERE a.datname = ANY(%s) AND a.pid <> pg_catalog.pg_backend_pid()"
    " AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
    " AND (r.rolsuper OR NOT (pg_catalog.pg_has_role(a.usesysid, 'MEMBER')"
    " OR pg_catalog.pg_has_role('pg_signal_backend', 'MEMBER'))) ORDER BY a.pid"
)
DATABASE_OID = "SELECT oid::bigint FROM pg_catalog.pg_database WHERE datname = %s"
SIGNAL_PIDS = "SELECT pid, pg_catalog.pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid"
PREPARED_XACTS = (
    "SELECT database, count(*), min(gid), min(prepared)::text FROM pg_catalog.pg_prepared_xacts"
    " WHERE database = ANY(%s) GROUP BY database ORDER BY database"
)


class RenameError(Exception):
    """A refusal or failure; the message is one clear line, safe to show.

    `result` is what was done before the failure (renamed, dropped_target,
    blocked, actions), so the caller's undo journal and rollback need not guess.
    """

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result or {}


def validate_names(name, target, maintenance_db):
    for option, value in (("name", name), ("target", target)):
        try:
            validate_identifier(value, "%s (database name)" % option)
        except ValueError as exc:
            raise RenameError(str(exc)) from None
    if name == target:
        raise RenameError("name and target are both '%s'; give two different database names" % name)
    for option, value in (("name", name), ("target", target)):
        if value == maintenance_db:
            raise RenameError(
                "%s '%s' is the maintenance database this module connects to, and the current "
                "database cannot be renamed or dropped; set maintenance_db to another database "
                "(for example postgres or template1)" % (option, value)
            )


def describe_rows(tables, limit=3):
    """'580 rows in knowledge_base, 6 in web_sources' for the fullest tables."""
    ranked = sorted(
        ((info["rows"], key) for key, info in tables.items() if (info.get("rows") or 0) > 0),
        key=lambda item: (-item[0], item[1]),
    )
    if not ranked:
        return "no rows"
    parts = ["%d rows in %s" % ranked[0]] + ["%d in %s" % item for item in ranked[1:limit]]
    if len(ranked) > limit:
        parts.append("%d more table(s)" % (len(ranked) - limit))
    return ", ".join(parts)


class TableCounter:
    """Exact counts of a database's tables, through sessions that give up on a lock
    after `lock_wait_timeout` seconds and then name the sessions that held it.

    `connector` opens the sessions (its lock_timeout set); db_rename and
    app_switch count through it, before and inside the window alike.
    """

    def __init__(self, connector, lock_wait_timeout):
        self.connector = connector
        self.lock_wait_timeout = lock_wait_timeout
        # Sessions opened ahead (preopen), each used once by the next count of its database.
        self.ready = {}

    def preopen(self, dbname):
        """Open the session of the next count of `dbname` now (before a downtime window): the count
        then only runs its statements. Its snapshot is taken at its first statement, not here."""
        if dbname not in self.ready:
            self.ready[dbname] = self.connector.open(dbname)

    def _open(self, dbname):
        return self.ready.pop(dbname, None) or self.connector.open(dbname)

    def close(self):
        for conn in self.ready.values():
            conn.close()
        self.ready = {}

    def _lock_wait(self, dbname, what):
        return InventoryError(lock_wait_message(
            "%s '%s'" % (what, dbname), self.lock_wait_timeout,
            holders_of(self.connector, dbname)) + "; nothing was changed")

    def tables(self, dbname):
        """{table: {rows, ...}} of `dbname`, counted exactly in one snapshot (db_info's inventory)."""
        conn = self._open(dbname)
        options = dict(
            count="exact", exact_max_rows=0, expected=[], checksum=[], data_tables=[],
            migrations=(DEFAULT_SCHEMA, MIGRATIONS_TABLE),
        )
        try:
            return inspect_database(conn, options)["tables"]
        except DB_ERRORS as exc:
            if not is_lock_timeout(exc):
                raise
            raise self._lock_wait(dbname, "counting the rows of") from None

    def last_word(self, dbname):
        """{table: {rows, checksum}} of every counted table of `dbname`: exact count and content
        checksum ("rows:sum", as db_info's checksum_tables) from one scan per table, one snapshot."""
        conn = self._open(dbname)
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
            with conn.cursor() as cur:
                relations = list_relations(cur)
                scanned = count_and_checksum(cur, relations)
            conn.rollback()
        except DB_ERRORS as exc:
            if not is_lock_timeout(exc):
                raise
            raise self._lock_wait(dbname, "counting and checksumming the rows of") from None
        finally:
            conn.close()
        return {table_key(*key): dict(rows=rows, checksum=checksum)
                for key, (rows, checksum) in scanned.items()}


class Renamer:
    """Plans and runs one rename through `cur` (autocommit, maintenance db).

    `count_tables(dbname)` returns {table: {rows, ...}} counted exactly;
    `last_word(dbname)`, when given, {table: {rows, checksum}} (count_source).
    `clock` and `sleep` are injectable so the polling can be tested.
    """

    def __init__(self, cur, count_tables, check_mode=False, terminate_timeout=10.0,
                 clock=time.monotonic, sleep=time.sleep, count_source=False, journal=None,
                 target_backup=None, last_word=None):
        self.cur = cur
        self.last_word = last_word
        # journal(step, **details) records each change just before it is
        # made: a crash between the two leaves an entry whose undo finds
        # nothing to do, never a change the rollback does not know about.
        self.journal = journal or (lambda step, **details: None)
        self.target_backup = target_backup
        self.count_source = count_source
        self.count_tables = count_tables
        self.check_mode = check_mode
        self.terminate_timeout = float(terminate_timeout)
        self.clock = clock
        self.sleep = sleep
        self.actions = []
        self.signalled = set()

    # -- reading -----------------------------------------------------------

    def _existing(self, names):
        self.cur.execute(FIND_DATABASES, (list(names),))
        return {row[0]: bool(row[1]) for row in self.cur.fetchall()}

    def _oid(self, db):
        self.cur.execute(DATABASE_OID, (db,))
        row = self.cur.fetchone()
        return int(row[0]) if row else None

    def _sessions(self, dbs):
        self.cur.execute(LIST_SESSIONS, (list(dbs),))
        return self.cur.fetchall()

    # -- writing -----------------------------------------------------------

    def _allow(self, db, allow):
        stmt = sql.SQL("ALTER DATABASE {0} WITH ALLOW_CONNECTIONS {1}").format(
            ident(db), sql.SQL("true" if allow else "false")
        )
        self.cur.execute(stmt)

    def _signal(self, dbs):
        self.cur.execute(SIGNAL_SESSIONS, (list(dbs),))
        for pid, ok in self.cur.fetchall():
            if ok:
                self.signalled.add(pid)

    def end_sessions(self, dbs):
        """Signal every backend of `dbs` at once, then wait until none is left."""
        self._signal(dbs)
        deadline = self.clock() + self.terminate_timeout
        while True:
            left = self._sessions(dbs)
            if not left:
                return
            fresh = [row[0] for row in left if row[0] not in self.signalled]
            if fresh:
                self.cur.execute(SIGNAL_PIDS, (fresh,))
                for pid, ok in self.cur.fetchall():
                    if ok:
                        self.signalled.add(pid)
            if self.clock() >= deadline:
                shown = ", ".join(
                    "pid %s (application '%s', user '%s', database '%s')" % tuple(row[:4])
                    for row in left[:5]
                )
                more = "" if len(left) <= 5 else " and %d more" % (len(left) - 5)
                raise RenameError(
                    "%d session(s) still connected after %gs: %s%s; end them or raise "
                    "terminate_timeout (the role needs superuser or pg_signal_backend)"
                    % (len(left), self.terminate_timeout, shown, more)
                )
            self.sleep(POLL_INTERVAL)

    def _in_use_retry(self, stmt, dbs):
        """Run `stmt`; if a session slipped in meanwhile, end it and retry once."""
        try:
            self.cur.execute(stmt)
        except DB_ERRORS as exc:
            if getattr(exc, "pgcode", None) != "55006":  # object_in_use
                raise
            self.end_sessions(dbs)
            self.cur.execute(stmt)

    # -- the whole operation -------------------------------------------------

    def run(self, name, target, maintenance_db, drop_empty_target=False):
        validate_names(name, target, maintenance_db)
        result = dict(
            changed=False,
            renamed=False,
            dropped_target=False,
            terminated=0,
            would_rename=False,
            would_drop=False,
            would_terminate=0,
            actions=self.actions,
            blocked_ms=0,
        )
        existing = self._existing([name, target])

        if name not in existing:
            if target not in existing:
                raise RenameError(
                    "neither '%s' nor '%s' exists on the server; check name and target" % (name, target)
                )
            if existing[target]:
                self.actions.append("'%s' is already named '%s'; nothing to do" % (name, target))
                return result
            # An interrupted run renamed but left connections blocked.
            result["changed"] = True
            if self.check_mode:
                self.actions.append("would allow connections to '%s' again" % target)
            else:
                self._allow(target, True)
                self.actions.append("allowed connections to '%s' again" % target)
            return result

        drop = False
        if target in existing:
            tables = tables_with_data(self.count_tables(target), ignore=())
            if tables:
                raise RenameError(
                    "target database '%s' holds data (%s); consolidation refused — nothing was changed"
                    % (target, describe_rows(tables))
                )
            if not drop_empty_target:
                raise RenameError(
                    "target database '%s' exists (empty); set drop_empty_target: true to drop it "
                    "first — nothing was changed" % target
                )
            drop = True

        dbs = [name] + ([target] if drop else [])
        self._refuse_prepared(dbs)
        self._refuse_unendable(dbs)
        result.update(changed=True, would_rename=True, would_drop=drop)
        if self.check_mode:
            result["would_terminate"] = len(self._sessions(dbs))
            if drop:
                self.actions.append("would drop the empty database '%s'" % target)
            self.actions.append(
                "would end %d session(s) and rename '%s' to '%s'"
                % (result["would_terminate"], name, target)
            )
            return result

        if self.count_source:
            # Last counts before the rename; nobody can connect once blocked. With last_word, the
            # content checksum of every table comes from the same scan.
            if self.last_word is not None:
                scanned = self.last_word(name)
                result["checksums"] = {table: info["checksum"] for table, info in scanned.items()}
            else:
                scanned = self.count_tables(name)
            result["row_counts"] = {table: int(info.get("rows") or 0) for table, info in scanned.items()}
        oid = self._oid(name)
        blocked = []
        started = self.clock()
        try:
            self.journal("db_block", databases=dbs)
            for db in dbs:
                self._allow(db, False)
                blocked.append(db)
            self.actions.append("blocked new connections to %s" % ", ".join("'%s'" % d for d in dbs))
            self.end_sessions(dbs)
            result["terminated"] = len(self.signalled)
            self.actions.append("ended %d session(s)" % len(self.signalled))
            if drop:
                self.journal("db_drop", database=target, backup=self.target_backup)
                self._in_use_retry(sql.SQL("DROP DATABASE {0}").format(ident(target)), dbs)
                blocked.remove(target)
                result["dropped_target"] = True
                self.actions.append("dropped the empty database '%s'" % target)
            self.journal("db_rename", **{"from": name, "to": target})
            self._in_use_retry(
                sql.SQL("ALTER DATABASE {0} RENAME TO {1}").format(ident(name), ident(target)), [name]
            )
            blocked = [target]
            result["renamed"] = True
            self.actions.append("renamed '%s' to '%s'" % (name, target))
            # The proof of a catalog-only change: the same database (OID), hence the same files and
            # rows, now answers to the target name.
            renamed_oid = self._oid(target)
            result["oid"] = renamed_oid
            if renamed_oid != oid:
                raise RenameError("'%s' has OID %s after the rename, not %s: another database took the name"
                                  % (target, renamed_oid, oid))
            self._allow(target, True)
            blocked = []
            self.actions.append("allowed connections to '%s'" % target)
        except (RenameError, JournalError) + DB_ERRORS as exc:
            result["terminated"] = len(self.signalled)
            result["blocked"] = list(blocked)
            restored = self._restore(blocked)
            result["blocked"] = [db for db in blocked if db not in restored]
            reason = first_line(exc)
            done = "; ".join(self.actions) or "nothing"
            raise RenameError(
                "renaming '%s' to '%s' failed: %s (done: %s%s)"
                % (name, target, reason, done, restored_text(restored, result["blocked"])),
                result,
            ) from None
        finally:
            result["blocked_ms"] = int((self.clock() - started) * 1000)
        return result

    def _refuse_unendable(self, dbs):
        """A session our login may not end would make the rename fail once connections
        are blocked: refuse before anything changes (in check mode too, so that the
        rehearsal catches it before the app stops)."""
        self.cur.execute(UNENDABLE_SESSIONS, (list(dbs),))
        rows = self.cur.fetchall()
        if rows:
            shown = ", ".join(
                "pid %s (application '%s', user '%s', database '%s')" % tuple(row[:4]) for row in rows[:5])
            more = "" if len(rows) <= 5 else " and %d more" % (len(rows) - 5)
            raise RenameError(
                "%d session(s) on the databases to rename belong to a role this login may not end: %s%s; "
                "end them as a superuser (pg_terminate_backend), or log in as a superuser or a member of "
                "pg_signal_backend — nothing was changed" % (len(rows), shown, more))

    def _refuse_prepared(self, dbs):
        """A prepared transaction has no session to end, yet pins its database:
        DROP and RENAME would fail inside the window (and a rename can bring a
        PostgreSQL 15 server down), so refuse before anything changes."""
        self.cur.execute(PREPARED_XACTS, (list(dbs),))
        rows = self.cur.fetchall()
        if rows:
            shown = "; ".join("'%s' has %d (gid '%s', prepared %s)" % tuple(row) for row in rows)
            raise RenameError(
                "prepared transactions pin the databases to rename: %s; COMMIT PREPARED or ROLLBACK "
                "PREPARED them (see pg_prepared_xacts) and rerun — nothing was changed" % shown)

    def _restore(self, blocked):
        """Allow connections again on `blocked`; returns the ones it could."""
        restored = []
        for db in blocked:
            try:
                self._allow(db, True)
                restored.append(db)
            except DB_ERRORS:
                pass
        return restored


def restored_text(restored, failed):
    text = ""
    if restored:
        text += "; connections allowed again on %s" % ", ".join("'%s'" % d for d in restored)
    if failed:
        text += (
            "; could NOT allow connections again on %s: run ALTER DATABASE ... WITH "
            "ALLOW_CONNECTIONS true" % ", ".join("'%s'" % d for d in failed)
        )
    return text
