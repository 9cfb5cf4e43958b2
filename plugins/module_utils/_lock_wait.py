# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Never wait forever on another session's lock, and say whose it is (private).

PostgreSQL's ``lock_timeout`` makes a statement that waits for a table or
row lock give up with SQLSTATE 55P03, but the error does not say who held
the lock, and once it is raised our session no longer waits, so
``pg_blocking_pids()`` has nothing to tell. ``BlockerWatch`` therefore looks
while the statement still waits: a thread with a second connection polls
``pg_blocking_pids(<our pid>)`` and keeps the last sessions it saw, so the
failure can name them (pid, application, user, state, since when).

The watch reads only ``pg_stat_activity``; it never takes a lock itself.

Reading (counting rows, dumping) needs only ``ACCESS SHARE``, which only an
``ACCESS EXCLUSIVE`` lock blocks. Once such a wait has timed out,
``lock_holders()`` finds, in the same database, the sessions holding or
queued for an ``ACCESS EXCLUSIVE`` lock on a relation: they are the ones a
reader waits behind, and they still hold it when the error is reported.
"""

from __future__ import annotations

import threading
import time

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import psycopg2, timeout_ms

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"

_BLOCKERS = (
    "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown'), a.usename, "
    "coalesce(a.state, 'unknown'), coalesce(a.xact_start, a.backend_start) "
    "FROM pg_catalog.pg_stat_activity a "
    "WHERE a.pid = ANY (pg_catalog.pg_blocking_pids(%s)) ORDER BY a.pid"
)


# Other sessions holding (or queued ahead for) the one lock mode a reader waits behind.
_EXCLUSIVE_HOLDERS = (
    "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown'), a.usename, "
    "coalesce(a.state, 'unknown'), coalesce(a.xact_start, a.backend_start), "
    "string_agg(DISTINCT l.relation::pg_catalog.regclass::text, ', ') "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' "
    "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
    "AND l.pid <> pg_catalog.pg_backend_pid() "
    "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1"
)


def is_lock_timeout(exc):
    return getattr(exc, "pgcode", None) == LOCK_NOT_AVAILABLE


def is_statement_timeout(exc):
    return getattr(exc, "pgcode", None) == QUERY_CANCELED


def set_session_timeouts(cur, lock_timeout, statement_timeout=None):
    """Set lock_timeout (and statement_timeout) on the cursor's session, in seconds.

    Inside a transaction the values end with it when it is rolled back.
    """
    cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (timeout_ms(lock_timeout),))
    if statement_timeout:
        cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)",
                    (timeout_ms(statement_timeout),))


def _fmt_since(value):
    if value is None:
        return "an unknown time"
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def describe_sessions(rows):
    """'pid 123 (application psql, user app, idle in transaction since ...)' for each row."""
    return ", ".join(
        "pid %s (application %s, user %s, %s since %s)" % (pid, app, user, state, _fmt_since(since))
        for pid, app, user, state, since in rows
    )


def lock_holders(cur):
    """Rows (pid, application, user, state, since, relations) of the other sessions
    holding or queued for an ACCESS EXCLUSIVE lock in the cursor's database.

    The cursor must be outside an aborted transaction (roll back first).
    """
    cur.execute(_EXCLUSIVE_HOLDERS)
    return cur.fetchall()


def describe_holders(rows):
    """'pid 123 (application psql, user app, idle in transaction since ...) on public.t' per row."""
    if not rows:
        return "a session that had ended by the time it was looked for"
    return ", ".join("%s on %s" % (describe_sessions([row[:5]]), row[5]) for row in rows)


def lock_wait_message(what, seconds, rows, option="lock_wait_timeout"):
    """The one line of a read that gave up waiting for a lock."""
    return ("%s waited %gs (%s) for a lock held by %s; end that session (pg_terminate_backend) or "
            "wait until it is done, then run again" % (what, seconds, option, describe_holders(rows)))


def holders_of(connector, dbname):
    """lock_holders() through a fresh connection to `dbname`; [] when it cannot be had."""
    try:
        conn = connector.open(dbname)
    # it only improves a message: whatever fails here leaves the original error
    except Exception:  # pylint: disable=broad-except
        return []
    try:
        with conn.cursor() as cur:
            return lock_holders(cur)
    except psycopg2.Error:
        return []
    finally:
        conn.close()


class BlockerWatch:
    """Poll, from `watch_conn`, which sessions block the backend `pid`.

    Use as a context manager around the work on the watched connection;
    ``blockers`` holds the rows seen last (see describe_sessions). Errors of
    the watch connection end the watch quietly: it only ever improves a
    message.
    """

    def __init__(self, watch_conn, pid, interval=0.1):
        self.conn = watch_conn
        self.pid = pid
        self.interval = interval
        self.blockers = []
        self.seen_at = None  # time.monotonic() of the last sighting
        self._stop = threading.Event()
        self._thread = None

    def _poll(self):
        try:
            with self.conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute(_BLOCKERS, (self.pid,))
                    rows = cur.fetchall()
                    if rows:
                        self.blockers, self.seen_at = rows, time.monotonic()
                    self._stop.wait(self.interval)
        except psycopg2.Error:
            return

    def __enter__(self):
        if self.conn is not None:
            self._thread = threading.Thread(target=self._poll, name="qadhya-blocker-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return False

    def describe(self, max_age=None):
        """The blocking sessions seen (within `max_age` seconds), or plain words when none was."""
        fresh = max_age is None or (self.seen_at is not None and time.monotonic() - self.seen_at <= max_age)
        if self.blockers and fresh:
            return describe_sessions(self.blockers)
        return "a session the watch did not see in time"
