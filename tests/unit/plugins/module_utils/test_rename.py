# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the rename decisions and sequence, against a fake server cursor."""

from __future__ import annotations

import re

import pytest


import psycopg2
from sqltext import flatten

from ansible_collections.qadhya.dbops.plugins.module_utils import _rename as rn


IDENT = r'"((?:[^"]|"")*)"'


def unquote(text):
    return text.replace('""', '"')


class InUse(psycopg2.OperationalError):
    pgcode = "55006"


class FakeServer:
    """pg_database + pg_stat_activity, enough for the rename sequence.

    sessions: {pid: [db, app, user, polls_left]}; a signalled session
    disappears after `polls_left` polls (None: never, it ignores the signal).
    """

    def __init__(self, dbs, sessions=None, fail_on=None, prepared=None, unendable=()):
        self.dbs = dict(dbs)
        # OIDs: a rename keeps the database's, a drop loses it
        self.oids = {name: 16384 + i for i, name in enumerate(self.dbs)}
        # pids of sessions our login may not end (a superuser's, another role's)
        self.unendable = set(unendable)
        # {database: [(gid, prepared at)]}: prepared transactions, which no signal ends
        self.prepared = prepared or {}
        self.sessions = {pid: list(s) for pid, s in (sessions or {}).items()}
        self.signalled = set()
        self.statements = []
        self.fail_on = fail_on or {}
        self._rows = []

    # cursor API
    def execute(self, query, params=None):
        text = flatten(query)
        self.statements.append(text)
        for pattern, exc in list(self.fail_on.items()):
            if pattern in text:
                del self.fail_on[pattern]
                raise exc
        if text == rn.DATABASE_OID:
            self._rows = [(self.oids[params[0]],)] if params[0] in self.oids else []
        elif text == rn.FIND_DATABASES:
            self._rows = [(n, a) for n, a in self.dbs.items() if n in params[0]]
        elif text == rn.PREPARED_XACTS:
            self._rows = [(db, len(x), min(pair[0] for pair in x), min(pair[1] for pair in x))
                          for db, x in sorted(self.prepared.items()) if db in params[0] and x]
        elif text == rn.UNENDABLE_SESSIONS:
            self._rows = [(pid, s[1], s[2], s[0]) for pid, s in sorted(self.sessions.items())
                          if s[0] in params[0] and pid in self.unendable]
        elif text == rn.SIGNAL_SESSIONS:
            self._rows = []
            for pid, s in self.sessions.items():
                if s[0] in params[0]:
                    self.signalled.add(pid)
                    self._rows.append((pid, True))
        elif text == rn.SIGNAL_PIDS:
            self._rows = [(pid, pid in self.sessions) for pid in params[0]]
            self.signalled.update(pid for pid in params[0] if pid in self.sessions)
        elif text == rn.LIST_SESSIONS:
            for pid in list(self.sessions):
                s = self.sessions[pid]
                if pid in self.signalled and s[3] is not None:
                    if s[3] <= 0:
                        del self.sessions[pid]
                    else:
                        s[3] -= 1
            self._rows = [(pid, s[1], s[2], s[0]) for pid, s in sorted(self.sessions.items())
                          if s[0] in params[0]]
        elif m := re.fullmatch("ALTER DATABASE %s WITH ALLOW_CONNECTIONS (true|false)" % IDENT, text):
            self.dbs[unquote(m.group(1))] = m.group(2) == "true"
        elif m := re.fullmatch("DROP DATABASE %s" % IDENT, text):
            name = unquote(m.group(1))
            assert not any(s[0] == name for s in self.sessions.values()), "drop while in use"
            del self.dbs[name]
            del self.oids[name]
        elif m := re.fullmatch("ALTER DATABASE %s RENAME TO %s" % (IDENT, IDENT), text):
            src, dst = unquote(m.group(1)), unquote(m.group(2))
            assert not any(s[0] == src for s in self.sessions.values()), "rename while in use"
            assert dst not in self.dbs
            self.dbs[dst] = self.dbs.pop(src)
            self.oids[dst] = self.oids.pop(src)
        else:
            raise AssertionError("unexpected statement: " + text)

    def fetchall(self):
        return list(self._rows)

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def writes(self):
        return [s for s in self.statements if s.startswith(("ALTER", "DROP"))]


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = 0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps += 1
        self.now += seconds


def renamer(server, tables=None, check_mode=False, timeout=10.0, target_backup=None):
    clock = Clock()
    counted = []
    journal = []

    def count(db):
        counted.append(db)
        return (tables or {}).get(db, {})

    def record(step, **details):
        # What the server looked like when the entry was written: before the change.
        journal.append((step, details, dict(server.dbs)))

    r = rn.Renamer(server, count, check_mode=check_mode, terminate_timeout=timeout,
                   clock=clock, sleep=clock.sleep, journal=record, target_backup=target_backup)
    r.counted = counted
    r.journal_entries = journal
    r.fake_clock = clock
    return r


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, target, message",
    [
        ("a", "a", "name and target are both 'a'"),
        ("", "b", "name (database name) must be a non-empty string"),
        ("a", "x" * 64, "longer than 63 bytes"),
        ("postgres", "b", "name 'postgres' is the maintenance database"),
        ("a", "postgres", "target 'postgres' is the maintenance database"),
    ],
)
def test_invalid_names_refused_before_any_statement(name, target, message):
    server = FakeServer({"a": True, "postgres": True})
    with pytest.raises(rn.RenameError, match=re.escape(message)):
        renamer(server).run(name, target, "postgres")
    assert server.statements == []


# -- decisions ----------------------------------------------------------------


def test_already_renamed_is_a_noop():
    server = FakeServer({"qadhya": True})
    result = renamer(server).run("moncabinet", "qadhya", "postgres")
    assert result["changed"] is False and result["renamed"] is False
    assert server.writes() == []
    assert "already named 'qadhya'" in result["actions"][0]


def test_already_renamed_but_blocked_is_repaired():
    server = FakeServer({"qadhya": False})
    result = renamer(server, check_mode=True).run("moncabinet", "qadhya", "postgres")
    assert result["changed"] is True and server.writes() == []
    result = renamer(server).run("moncabinet", "qadhya", "postgres")
    assert result["changed"] is True and server.dbs["qadhya"] is True


def test_neither_exists():
    server = FakeServer({"postgres": True})
    with pytest.raises(rn.RenameError, match="neither 'a' nor 'b' exists"):
        renamer(server).run("a", "b", "postgres")


def test_target_with_data_is_refused_even_with_drop():
    server = FakeServer({"moncabinet": True, "qadhya": True})
    tables = {"qadhya": {"knowledge_base": {"rows": 12}, "users": {"rows": 1}, "empty": {"rows": 0}}}
    with pytest.raises(rn.RenameError) as err:
        renamer(server, tables).run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert str(err.value) == (
        "target database 'qadhya' holds data (12 rows in knowledge_base, 1 in users); "
        "consolidation refused — nothing was changed"
    )
    assert server.writes() == []
    assert server.dbs == {"moncabinet": True, "qadhya": True}


def test_extension_rows_do_not_count_as_data():
    assert rn.tables_with_data({"spatial_ref_sys": {"rows": 8000, "extension": True}, "t": {"rows": 0}},
                               ignore=()) == {}


def test_empty_target_without_drop_is_refused():
    server = FakeServer({"moncabinet": True, "qadhya": True})
    tables = {"qadhya": {"knowledge_base": {"rows": 0}, "_migrations": {"rows": 0}}}
    r = renamer(server, tables)
    with pytest.raises(rn.RenameError, match="exists \\(empty\\); set drop_empty_target: true"):
        r.run("moncabinet", "qadhya", "postgres")
    assert r.counted == ["qadhya"] and server.writes() == []


def test_check_mode_plans_without_writing():
    server = FakeServer({"moncabinet": True, "qadhya": True},
                        sessions={101: ["moncabinet", "app", "u", 0], 102: ["other", "x", "u", 0]})
    result = renamer(server, {"qadhya": {}}, check_mode=True).run(
        "moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert result["changed"] is True
    assert result["would_drop"] is True and result["would_rename"] is True
    assert result["would_terminate"] == 1
    assert result["renamed"] is False and result["dropped_target"] is False
    assert server.writes() == [] and server.signalled == set()


# -- the real sequence --------------------------------------------------------


def test_rename_with_drop_full_sequence():
    sessions = {
        101: ["moncabinet", "qadhya-nextjs", "moncabinet", 2],
        102: ["moncabinet", "psql", "moncabinet", 0],
        103: ["qadhya", "idle", "moncabinet", 1],
        104: ["postgres", "other", "moncabinet", None],  # elsewhere: untouched
    }
    server = FakeServer({"moncabinet": True, "qadhya": True, "postgres": True}, sessions)
    r = renamer(server, {"qadhya": {"knowledge_base": {"rows": 0}}})
    result = r.run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert server.writes() == [
        'ALTER DATABASE "moncabinet" WITH ALLOW_CONNECTIONS false',
        'ALTER DATABASE "qadhya" WITH ALLOW_CONNECTIONS false',
        'DROP DATABASE "qadhya"',
        'ALTER DATABASE "moncabinet" RENAME TO "qadhya"',
        'ALTER DATABASE "qadhya" WITH ALLOW_CONNECTIONS true',
    ]
    assert server.dbs == {"qadhya": True, "postgres": True}
    assert result["changed"] and result["renamed"] and result["dropped_target"]
    assert result["terminated"] == 3
    assert 104 in server.sessions and 104 not in server.signalled
    # all signalled in one statement, then polled (not one wait per backend)
    assert server.statements.count(rn.SIGNAL_SESSIONS) == 1
    assert r.fake_clock.sleeps == 2


def test_weird_names_are_quoted():
    name, target = 'we"ird; DROP DATABASE x;--é', "نهائي db"
    server = FakeServer({name: True, "postgres": True})
    result = renamer(server).run(name, target, "postgres")
    assert result["renamed"]
    assert server.dbs == {target: True, "postgres": True}
    assert 'ALTER DATABASE "we""ird; DROP DATABASE x;--é" RENAME TO "نهائي db"' in server.writes()


def test_session_that_will_not_end_fails_and_restores():
    sessions = {201: ["moncabinet", "stubborn", "moncabinet", None]}
    server = FakeServer({"moncabinet": True}, sessions)
    r = renamer(server, timeout=0.1)
    with pytest.raises(rn.RenameError) as err:
        r.run("moncabinet", "qadhya", "postgres")
    msg = str(err.value)
    assert "1 session(s) still connected after 0.1s: pid 201 (application 'stubborn'" in msg
    assert "connections allowed again on 'moncabinet'" in msg
    assert server.dbs == {"moncabinet": True}
    assert not any("RENAME" in s for s in server.writes())
    assert 4 <= r.fake_clock.sleeps <= 7  # polled every 20 ms until the timeout


def test_session_arriving_during_poll_is_signalled_too():
    server = FakeServer({"moncabinet": True}, {1: ["moncabinet", "a", "u", 0]})
    original = server.execute

    def execute(query, params=None):
        original(query, params)
        if flatten(query) == rn.SIGNAL_SESSIONS:
            server.sessions[2] = ["moncabinet", "late", "u", 0]

    server.execute = execute
    result = renamer(server).run("moncabinet", "qadhya", "postgres")
    assert result["terminated"] == 2 and result["renamed"]


def test_failure_after_drop_restores_source():
    boom = psycopg2.errors.InsufficientPrivilege("must be owner of database moncabinet")
    server = FakeServer({"moncabinet": True, "qadhya": True}, fail_on={"RENAME TO": boom})
    with pytest.raises(rn.RenameError) as err:
        renamer(server, {"qadhya": {}}).run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    msg = str(err.value)
    assert msg.startswith("renaming 'moncabinet' to 'qadhya' failed: must be owner of database moncabinet")
    assert "dropped the empty database 'qadhya'" in msg
    assert "connections allowed again on 'moncabinet'" in msg
    assert server.dbs == {"moncabinet": True}


def test_failure_result_and_journal_say_what_was_done():
    boom = psycopg2.errors.InsufficientPrivilege("must be owner of database moncabinet")
    server = FakeServer({"moncabinet": True, "qadhya": True}, fail_on={"RENAME TO": boom})
    r = renamer(server, {"qadhya": {}}, target_backup="/b/qadhya.dump")
    with pytest.raises(rn.RenameError) as err:
        r.run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert err.value.result["dropped_target"] is True
    assert err.value.result["renamed"] is False
    assert err.value.result["blocked"] == []
    steps = [entry[:2] for entry in r.journal_entries]
    assert steps == [
        ("db_block", {"databases": ["moncabinet", "qadhya"]}),
        ("db_drop", {"database": "qadhya", "backup": "/b/qadhya.dump"}),
        ("db_rename", {"from": "moncabinet", "to": "qadhya"}),
    ]
    # Each entry is written before its change: the drop entry still sees qadhya.
    assert "qadhya" in r.journal_entries[1][2]


def test_journal_is_silent_in_check_mode_and_when_nothing_to_do():
    server = FakeServer({"moncabinet": True, "qadhya": True})
    r = renamer(server, {"qadhya": {}}, check_mode=True)
    r.run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert r.journal_entries == []
    done = renamer(FakeServer({"qadhya": True}))
    done.run("moncabinet", "qadhya", "postgres")
    assert done.journal_entries == []


@pytest.mark.parametrize("check_mode", [True, False])
def test_prepared_transaction_is_refused_before_any_change(check_mode):
    server = FakeServer({"moncabinet": True, "qadhya": True},
                        prepared={"qadhya": [("pin", "2026-12-01 10:00:00+00")]})
    r = renamer(server, {"qadhya": {}}, check_mode=check_mode)
    with pytest.raises(rn.RenameError, match=r"prepared transactions pin .*'qadhya' has 1 \(gid 'pin'"):
        r.run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert server.dbs == {"moncabinet": True, "qadhya": True}
    assert r.journal_entries == []
    assert not [s for s in server.statements if s.startswith(("ALTER", "DROP"))]


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_session_the_login_may_not_end_is_refused_before_any_change(check_mode):
    server = FakeServer({"moncabinet": True, "qadhya": True},
                        sessions={41: ["moncabinet", "psql", "postgres", None],
                                  42: ["qadhya", "app", "app", 0]},
                        unendable={41})
    r = renamer(server, {"qadhya": {}}, check_mode=check_mode)
    with pytest.raises(rn.RenameError, match=r"1 session\(s\) .* may not end: pid 41 \(application "
                                             r"'psql', user 'postgres', database 'moncabinet'\).*nothing"):
        r.run("moncabinet", "qadhya", "postgres", drop_empty_target=True)
    assert server.dbs == {"moncabinet": True, "qadhya": True}
    assert server.signalled == set() and r.journal_entries == []
    assert not [s for s in server.statements if s.startswith(("ALTER", "DROP"))]


def test_object_in_use_is_retried_once():
    server = FakeServer({"moncabinet": True}, fail_on={"RENAME TO": InUse("being accessed by other users")})
    result = renamer(server).run("moncabinet", "qadhya", "postgres")
    assert result["renamed"] and server.dbs == {"qadhya": True}
    assert server.statements.count(rn.SIGNAL_SESSIONS) == 2


def test_describe_rows_limits_and_orders():
    tables = {"a": {"rows": 1}, "b": {"rows": 5}, "c": {"rows": 5}, "d": {"rows": 2}, "e": {"rows": 0}}
    assert rn.describe_rows(tables) == "5 rows in b, 5 in c, 2 in d, 1 more table(s)"


def test_count_rows_reads_the_source_before_blocking():
    server = FakeServer({"moncabinet": True, "postgres": True})
    r = renamer(server, {"moncabinet": {"knowledge_base": {"rows": 580}, "users": {"rows": 2}}})
    r.count_source = True
    result = r.run("moncabinet", "qadhya", "postgres")
    assert result["row_counts"] == {"knowledge_base": 580, "users": 2}
    assert result["renamed"] is True


def test_count_rows_is_not_taken_when_already_renamed():
    server = FakeServer({"qadhya": True, "postgres": True})
    r = renamer(server, {"qadhya": {"knowledge_base": {"rows": 580}}})
    r.count_source = True
    assert "row_counts" not in r.run("moncabinet", "qadhya", "postgres")
