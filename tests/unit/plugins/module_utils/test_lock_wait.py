# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the lock-wait helpers: the timeout every session gets, and the line naming the blocker."""

from __future__ import annotations

import datetime

from ansible_collections.qadhya.dbops.plugins.module_utils import _connection as connection
from ansible_collections.qadhya.dbops.plugins.module_utils import _lock_wait as lw

SINCE = datetime.datetime(2026, 12, 1, 23, 42, 6)
PARAMS = dict(login_port=5432, login_user="app", connect_timeout=10, login_password="pw")


def test_every_session_of_a_connector_gets_the_lock_timeout():
    assert connection.Connector(PARAMS, "h", lock_timeout=2.5).kwargs["options"] == "-c lock_timeout=2500ms"
    assert connection.Connector(PARAMS, "h", lock_timeout=0.0001).kwargs["options"] == "-c lock_timeout=1ms"
    assert "options" not in connection.Connector(PARAMS, "h").kwargs  # no limit asked, none set


def test_the_line_names_pid_application_user_state_since_and_tables():
    rows = [(37, "fault-locker", "app", "idle in transaction", SINCE, "knowledge_base, public.users")]
    line = lw.lock_wait_message("the backup of 'moncabinet'", 2.0, rows)
    assert line == (
        "the backup of 'moncabinet' waited 2s (lock_wait_timeout) for a lock held by pid 37 "
        "(application fault-locker, user app, idle in transaction since 2026-12-01 23:42:06) "
        "on knowledge_base, public.users; end that session (pg_terminate_backend) or wait until it "
        "is done, then run again")
    assert "\n" not in line


def test_a_blocker_gone_before_it_was_looked_for_is_said_plainly():
    assert "had ended" in lw.lock_wait_message("counting", 5, [])


class FailingConnector:
    def open(self, dbname):
        raise RuntimeError("no server")


def test_looking_for_holders_never_hides_the_original_error():
    assert lw.holders_of(FailingConnector(), "db") == []
