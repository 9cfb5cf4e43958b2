# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database side of tracked migrations (private).

``MigrationRunner`` works on one autocommit connection: it takes the run's
advisory lock, reads and keeps the tracking table, and runs the steps
``plan_batches`` made: each transactional batch in one explicit
transaction together with its records (and the tracking table's creation),
each no-transaction file statement by statement. ``action=check`` runs the
same code in a transaction that is always rolled back (a rehearsal).

Every statement of ours runs under ``lock_timeout``; a ``BlockerWatch`` on
a second connection names the session that held the lock when one expires.
"""

from __future__ import annotations

import time

# One guarded import for every module: _connection holds it.
from ansible_collections.qadhya.dbops.plugins.module_utils._connection import psycopg2, sql
from ansible_collections.qadhya.dbops.plugins.module_utils._lock_wait import (
    BlockerWatch,
    is_lock_timeout,
    is_statement_timeout,
    set_session_timeouts,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._migrations import (
    TRACKING_COLUMNS,
    Batch,
    MigrationError,
    Record,
    adopt_decision,
    baseline_refusal,
    batch_failure_message,
    checksum_problems,
    error_location,
    format_when,
    lock_key,
    match_records,
    mismatch_message,
    partial_failure_message,
    pg_error_line,
    plan_batches,
    refuse_problems,
    select_files,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._sql_scan import statement_needs_no_transaction

# Errors of a file that hint at a migration already applied by hand.
_ALREADY_THERE = ("42P07", "42710", "42723", "42P06")


class Timeouts:
    """Seconds: another run's advisory lock, another session's table lock, a rehearsed statement."""

    __slots__ = ("run_lock", "lock_wait", "rehearsal")

    def __init__(self, run_lock=60, lock_wait=5.0, rehearsal=10.0):
        self.run_lock = run_lock
        self.lock_wait = lock_wait
        self.rehearsal = rehearsal


def _no_journal(step, **details):
    return None


class MigrationRunner:
    """Apply, baseline, rehearse or report migrations on one database connection.

    `journal` is called once per committed step (see ModuleJournal);
    `watch_conn`, a second connection, lets a lock timeout name its blocker.
    """

    def __init__(self, conn, schema, table, applied_by, check_mode=False, timeouts=None,
                 watch_conn=None, journal=None):
        self.conn = conn
        self.schema = schema
        self.table = table
        self.applied_by = applied_by
        self.check_mode = check_mode
        self.timeouts = timeouts or Timeouts()
        self.watch = BlockerWatch(watch_conn, conn.get_backend_pid(),
                                  interval=min(0.1, self.timeouts.lock_wait / 5))
        self.journal = journal or _no_journal
        self.database = conn.get_dsn_parameters().get("dbname")
        self.table_sql = sql.Identifier(schema, table)
        self.columns = None  # None: table absent
        self.result = dict(
            changed=False,
            applied=[],
            adopted=[],
            pending=[],
            would_adopt=[],
            already_applied=[],
            untracked_checksum=[],
            missing_files=[],
            tracking_table_created=False,
            tracking_table_upgraded=[],
            lock_wait_ms=0,
            batches=[],
            checked=[],
            check_skipped=[],
            problems=[],
        )
        self._locked = False
        self._statement = None  # the statement being sent, for the error's line
        self.warnings = []
        # File text is UTF-8; make the server read it as such whatever the
        # database's default client encoding.
        conn.set_client_encoding("UTF8")
        for session in (conn, watch_conn):
            if session is not None:
                with session.cursor() as cur:
                    set_session_timeouts(cur, self.timeouts.lock_wait)

    def _session_settings(self, cur, rehearse=False):
        """Our settings again after a file's RESET ALL (which also resets them)."""
        cur.execute("SELECT pg_catalog.set_config('client_encoding', 'UTF8', false)")
        set_session_timeouts(cur, self.timeouts.lock_wait, self.timeouts.rehearsal if rehearse else None)

    # -- small helpers -----------------------------------------------------
    def _query(self, query, params=None):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _label(self):
        return "%s.%s" % (self.schema, self.table)

    # -- lock --------------------------------------------------------------
    def acquire_lock(self, timeout):
        key = lock_key(self.schema, self.table)
        start = time.monotonic()
        deadline = start + max(timeout, 0)
        delay = 0.05
        while True:
            if self._query("SELECT pg_try_advisory_lock(%s)", (key,))[0][0]:
                self._locked = True
                self.result["lock_wait_ms"] = int((time.monotonic() - start) * 1000)
                return
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.5)
        holder = self.lock_holder(key)
        dbname = self.conn.get_dsn_parameters().get("dbname")
        raise MigrationError(
            "another migration run holds the lock on database %s (%s); retry later"
            % (dbname, holder),
            lock_wait_ms=int((time.monotonic() - start) * 1000),
        )

    def lock_holder(self, key):
        rows = self._query(
            "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unknown'), a.backend_start, "
            "a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        if not rows:
            return "holder not visible to this role"
        pid, app, since, user = rows[0]
        return "pid %s, application %s, user %s, since %s" % (pid, app, user, format_when(since))

    def release_lock(self):
        if not self._locked:
            return
        self._locked = False
        try:
            if self.conn.closed:
                return
            if self.conn.get_transaction_status() != 0:  # not idle: leave the failed transaction
                self.conn.rollback()
            self._query("SELECT pg_advisory_unlock(%s)", (lock_key(self.schema, self.table),))
        except psycopg2.Error:
            pass  # closing the connection releases a session lock anyway

    # -- tracking table ----------------------------------------------------
    def inspect_table(self):
        """Fill self.columns (list of names) or None when the table is absent."""
        rows = self._query(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.schema, self.table),
        )
        if not rows:
            other = self._query(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (self.schema, self.table),
            )
            if other:
                raise MigrationError(
                    "%s exists but is not a table (relkind %s); set the table option to "
                    "another name" % (self._label(), other[0][0])
                )
            self.columns = None
            return
        self.columns = [r[0] for r in rows]
        if "name" not in self.columns:
            raise MigrationError(
                "tracking table %s exists but has no name column (columns: %s); set the "
                "table option to another name" % (self._label(), ", ".join(self.columns))
            )

    def missing_columns(self):
        if self.columns is None:
            return []
        return [col for col, dummy in TRACKING_COLUMNS if col not in self.columns]

    def read_records(self):
        if self.columns is None:
            return []
        cols = []
        for col in ("name", "checksum", "applied_at", "adopted"):
            if col in self.columns:
                cols.append(sql.Identifier(col))
            else:
                cols.append(sql.SQL("NULL"))
        order = [sql.Identifier(c) for c in ("applied_at", "name") if c in self.columns]
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(cols), self.table_sql, sql.SQL(", ").join(order)
        )
        records = []
        for name, checksum, applied_at, adopted in self._query(query):
            if name is None:
                continue
            records.append(Record(str(name), checksum, applied_at, bool(adopted)))
        return records

    def ensure_table(self, cur):
        """Create or upgrade the tracking table on `cur`, inside the caller's transaction.

        Returns (created, columns added); self.columns follows only once the
        caller committed (see _committed).
        """
        if self.columns is None:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            cur.execute(
                sql.SQL("CREATE TABLE {} ({})").format(
                    self.table_sql,
                    sql.SQL(", ").join(
                        sql.SQL("{} " + ddl).format(sql.Identifier(col)) for col, ddl in TRACKING_COLUMNS
                    ),
                )
            )
            return True, []
        missing = self.missing_columns()
        for col, ddl in TRACKING_COLUMNS:
            if col in missing:
                cur.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + ddl.replace(
                        " PRIMARY KEY", "")).format(self.table_sql, sql.Identifier(col))
                )
        return False, missing

    def table_work(self):
        return self.columns is None or bool(self.missing_columns())

    def object_exists(self, obj):
        def regclass_text(schema, name):
            quoted = '"%s"' % name.replace('"', '""')
            return '"%s".%s' % (schema.replace('"', '""'), quoted) if schema else quoted

        if obj.kind in ("table", "view", "materialized view", "index", "sequence"):
            relkinds = {
                "table": ("r", "p", "f"),
                "view": ("v",),
                "materialized view": ("m",),
                "index": ("i", "I"),
                "sequence": ("S",),
            }[obj.kind]
            rows = self._query(
                "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (regclass_text(obj.schema, obj.name),),
            )
            return bool(rows) and rows[0][0] in relkinds
        if obj.kind in ("function", "procedure"):
            query = (
                "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname = %s AND "
            )
            if obj.schema:
                return bool(self._query(query + "n.nspname = %s", (obj.name, obj.schema)))
            return bool(self._query(query + "pg_function_is_visible(p.oid)", (obj.name,)))
        if obj.kind == "type":
            query = (
                "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE t.typname = %s AND "
            )
            if obj.schema:
                return bool(self._query(query + "n.nspname = %s", (obj.name, obj.schema)))
            return bool(self._query(query + "pg_type_is_visible(t.oid)", (obj.name,)))
        if obj.kind == "trigger":
            if not obj.on:
                return False
            return bool(
                self._query(
                    "SELECT 1 FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal "
                    "AND tgrelid = to_regclass(%s)",
                    (obj.name, regclass_text(obj.on[0], obj.on[1])),
                )
            )
        if obj.kind == "schema":
            return bool(self._query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (obj.name,)))
        return False  # pragma: no cover - parser yields only the kinds above

    def existence(self, mf):
        return {obj: self.object_exists(obj) for obj in mf.objects}

    # -- writes ------------------------------------------------------------
    def _insert(self, cur, name, checksum, execution_ms, adopted):
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (name, applied_at, checksum, applied_by, execution_ms, adopted) "
                "VALUES (%s, now(), %s, %s, %s, %s)"
            ).format(self.table_sql),
            (name, checksum, self.applied_by, execution_ms, adopted),
        )

    def _rollback_quietly(self):
        try:
            if not self.conn.closed and self.conn.get_transaction_status() != 0:
                self.conn.rollback()
        except psycopg2.Error:
            pass

    # -- one step ----------------------------------------------------------
    def run_transaction(self, batch, rehearse=False, skipped=()):
        """Run a transactional batch with its records; commit it, or roll back a rehearsal.

        Returns the applied entries. Any error rolls everything of the batch
        back (also the tracking table's creation) and becomes one line.
        """
        step, current = "setup", None
        done = []
        try:
            with self.conn.cursor() as cur:
                cur.execute("BEGIN")
                if rehearse:
                    self._session_settings(cur, rehearse)
                table = self.ensure_table(cur) if batch.setup else (False, [])
                step = "adopt"
                for mf in batch.adopt:
                    self._insert(cur, mf.name, mf.sha256, None, True)
                for mf in batch.files:
                    step, current = "run", mf
                    start = time.monotonic()
                    self._execute_file(cur, mf, [])
                    elapsed = int((time.monotonic() - start) * 1000)
                    step = "record"
                    self._insert(cur, mf.name, mf.sha256, elapsed, False)
                    # Session settings a file changed (search_path, role...)
                    # must not leak into the next file; RESET ALL keeps the
                    # advisory lock but also resets ours.
                    cur.execute("RESET ALL")
                    self._session_settings(cur, rehearse)
                    done.append(dict(name=mf.name, sha256=mf.sha256, execution_ms=elapsed))
                step, current = "commit", None
                cur.execute("ROLLBACK" if rehearse else "COMMIT")
        except psycopg2.Error as exc:
            self._rollback_quietly()
            raise self._step_error(batch, step, current, exc, rehearse, skipped) from exc
        if not rehearse:
            self._committed(batch, done, table)
        return done

    def _execute_file(self, cur, mf, ran):
        """Send the statements of `mf` one by one, appending each that ran to `ran`.

        One by one (rather than the file as one query) so an error without a
        position, a runtime one, still names its statement's line; and so a
        no-transaction file's statements each commit on their own.
        """
        self._statement = None
        for statement in mf.statements:
            self._statement = statement
            cur.execute(statement.text(mf.text))
            ran.append(statement)
        self._statement = None

    def _where(self, mf, exc):
        """' at line N (character P)' of the error, else the line of the statement that failed."""
        statement = self._statement
        if statement is None:
            return error_location(mf.text, exc)
        # an error without a position (a missing column of an index, a
        # duplicate key...) still belongs to the one statement that was sent
        return (error_location(mf.text, exc, offset=statement.start)
                or " in the statement on line %d" % statement.line)

    def run_alone(self, batch):
        """Run a no-transaction file statement by statement, then record it."""
        mf = batch.files[0]
        ran = []
        try:
            with self.conn.cursor() as cur:
                start = time.monotonic()
                self._execute_file(cur, mf, ran)
                elapsed = int((time.monotonic() - start) * 1000)
                self._insert(cur, mf.name, mf.sha256, elapsed, False)
                cur.execute("RESET ALL")
                self._session_settings(cur)
        except psycopg2.Error as exc:
            self._rollback_quietly()
            statement = self._statement
            if statement is None:
                msg = ("migration %s ran (without a transaction) but could not be recorded in %s: "
                       "%s; record it with action=baseline" % (mf.name, self._label(), pg_error_line(exc)))
            else:
                msg = partial_failure_message(mf, self._error_text(exc), self._where(mf, exc), ran,
                                              statement_needs_no_transaction(statement) or "")
            partial = dict(name=mf.name, statements_run=len(ran), statements=len(mf.statements),
                           up_to_line=ran[-1].line if ran else None)
            if ran:
                self.journal("migration", database=self.database, table=self._label(), applied=[],
                             adopted=[], partial=partial)
            raise MigrationError(msg, failed=mf.name, pgcode=getattr(exc, "pgcode", None),
                                 partial=partial if ran else None) from exc
        self._committed(batch, [dict(name=mf.name, sha256=mf.sha256, execution_ms=elapsed)], (False, []))

    def _committed(self, batch, done, table):
        """Account for a committed step: result, tracking table state, journal."""
        res = self.result
        created, added = table
        if created:
            self.columns = [col for col, dummy in TRACKING_COLUMNS]
            res["tracking_table_created"] = True
        elif added:
            self.columns.extend(added)
            res["tracking_table_upgraded"] = added
        res["adopted"].extend(mf.name for mf in batch.adopt)
        res["applied"].extend(done)
        res["changed"] = True
        entry = dict(database=self.database, table=self._label(), applied=[d["name"] for d in done],
                     adopted=[mf.name for mf in batch.adopt])
        if created or added:
            entry.update(tracking_table_created=created, tracking_table_upgraded=added)
        self.journal("migration", **entry)

    def _error_text(self, exc):
        """The server's error, with whose lock it waited for when it timed out."""
        if is_lock_timeout(exc):
            # a sighting older than this wait was of another, earlier wait
            return "%s: waited %gs (lock_wait_timeout) for a lock held by %s" % (
                pg_error_line(exc), self.timeouts.lock_wait, self.watch.describe(self.timeouts.lock_wait + 1))
        return pg_error_line(exc)

    def _step_error(self, batch, step, current, exc, rehearse, skipped):
        pgcode = getattr(exc, "pgcode", None)
        error = self._error_text(exc)
        name = current.name if current is not None else (batch.names or [None])[0]
        if step == "run":
            if rehearse and is_statement_timeout(exc):
                error += " (the rehearsal gives each statement rehearsal_timeout %gs; raise it " \
                    "for a long migration)" % self.timeouts.rehearsal
            elif pgcode in _ALREADY_THERE:
                error += "; if it was applied by hand, record it with action=baseline or adopt_existing=true"
            # files are in lexical order: those skipped before this one
            before = [name for name in skipped if name < current.name]
            msg = batch_failure_message(batch, current, self._where(current, exc), error,
                                        rehearsal=rehearse, skipped=before)
        else:
            what = {"setup": "creating or upgrading the tracking table %s",
                    "adopt": "recording the adopted migrations in %s",
                    "record": "recording migration %s in %%s" % name,
                    "commit": "committing the batch with %s"}[step] % self._label()
            msg = "%s failed: %s; nothing of its batch was %s" % (
                what, error, "changed" if rehearse else "applied")
        return MigrationError(msg, failed=name, pgcode=pgcode)

    # -- the run -----------------------------------------------------------
    def _split(self, chosen, action, adopt_existing):
        """(to_apply, to_adopt) among the chosen files."""
        if action == "baseline":
            problems = [baseline_refusal(mf, self.existence(mf)) for mf in chosen]
            problems = [p for p in problems if p]
            if problems:
                raise MigrationError("; ".join(problems))
            self.warnings.extend(
                "%s creates no table, index, view, function, sequence, type or trigger "
                "the module can verify; recorded on your word" % mf.name
                for mf in chosen if not mf.objects
            )
            return [], chosen
        if not adopt_existing:
            return chosen, []
        to_apply, to_adopt = [], []
        for mf in chosen:
            if adopt_decision(mf, self.existence(mf)) == "adopt":
                to_adopt.append(mf)
            else:
                to_apply.append(mf)
        return to_apply, to_adopt

    def rehearse(self, batches):
        """action=check: every transactional file in one transaction, always rolled back.

        Files that cannot run in a transaction are left out, and so is what
        follows a file whose effect needs a commit (a new enum value), which
        a transaction that never commits cannot give.
        """
        res = self.result
        skipped = []
        together = Batch([], adopt=batches[0].adopt if batches else [],
                         setup=bool(batches) and batches[0].setup)
        commit_needed = None  # the file after which a rehearsal cannot go on
        for mf in (mf for batch in batches for mf in batch.files):
            if commit_needed is not None:
                line, what = commit_needed.ends_batch
                reason = "comes after %s, whose %s on line %d must be committed first; not " \
                    "rehearsed" % (commit_needed.name, what, line)
                line = None
            elif not mf.transactional:
                reason = "cannot run in a transaction (%s); not rehearsed" % mf.no_transaction[1]
                line = mf.no_transaction[0]
            else:
                together.files.append(mf)
                if mf.ends_batch:
                    commit_needed = mf
                continue
            skipped.append(mf.name)
            res["check_skipped"].append(dict(name=mf.name, line=line, reason=reason))
        if together.files or together.adopt or together.setup:
            # a file may depend on a skipped one before it; the message says so
            self.run_transaction(together, rehearse=True, skipped=skipped)
        res["checked"] = together.names

    def run(self, files, action, names, target, adopt_existing):
        res = self.result
        writes = action in ("apply", "baseline") and not self.check_mode
        with self.watch:
            try:
                if writes or action == "check":
                    self.acquire_lock(self.timeouts.run_lock)
                self.inspect_table()
                records = self.read_records()
                applied, res["missing_files"] = match_records(files, records)
                res["already_applied"] = [mf.name for mf in files if mf.name in applied]
                untracked, mismatches = checksum_problems(files, applied)
                res["untracked_checksum"] = untracked
                if mismatches:
                    raise MigrationError(mismatch_message(mismatches), checksum_mismatches=mismatches)

                chosen = select_files(files, applied, names, target, action)
                to_apply, to_adopt = self._split(chosen, action, adopt_existing)
                if action == "status":
                    res["problems"] = [p for p in (mf.problem() for mf in to_apply) if p]
                else:
                    refuse_problems(to_apply)
                batches = plan_batches(to_apply, to_adopt, self.table_work())
                res["batches"] = [dict(files=b.names, transaction=b.transactional)
                                  for b in batches if b.files]
                if action == "check":
                    self.rehearse(batches)
                if not writes:
                    return self._plan(to_apply, to_adopt, action)
                for index, batch in enumerate(batches):
                    try:
                        if batch.transactional:
                            self.run_transaction(batch)
                        else:
                            self.run_alone(batch)
                    except MigrationError as exc:
                        res["pending"] = [name for b in batches[index:] for name in b.names]
                        exc.details.update(res, **exc.details)
                        raise
                return res
            except psycopg2.Error as exc:
                error = self._error_text(exc)
                raise MigrationError(
                    "database error while working on %s: %s" % (self._label(), error), **res
                ) from exc
            finally:
                self.release_lock()

    def _plan(self, to_apply, to_adopt, action):
        """Result of a run that writes nothing: what apply would do."""
        res = self.result
        res["pending"] = [mf.name for mf in to_apply]
        res["would_adopt"] = [mf.name for mf in to_adopt]
        if action in ("apply", "baseline"):
            res["changed"] = bool(to_apply or to_adopt or self.table_work())
        if action != "status":
            if self.columns is None:
                res["tracking_table_created"] = True
            else:
                res["tracking_table_upgraded"] = self.missing_columns()
        return res
