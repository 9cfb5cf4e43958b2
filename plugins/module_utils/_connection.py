# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connection and identifier helpers shared by the modules (private)."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.qadhya.dbops.plugins.module_utils._docker import DockerError, container_ip
from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

PSYCOPG2_IMPORT_ERROR = None
try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # pragma: no cover - exercised only without psycopg2
    psycopg2 = None
    sql = None
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()

# PostgreSQL truncates identifiers to NAMEDATALEN-1 bytes; refusing longer
# names avoids acting on a different object than the one asked for.
MAX_IDENTIFIER_BYTES = 63


def timeout_ms(seconds):
    """A GUC value in milliseconds; never 0, which PostgreSQL reads as 'no limit'."""
    return "%dms" % max(1, int(round(seconds * 1000)))


def connection_argument_spec():
    """Options every module takes to reach the server (see doc fragment)."""
    return dict(
        db_container=dict(type="str"),
        login_host=dict(type="str"),
        login_port=dict(type="int", default=5432),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", no_log=True),
        maintenance_db=dict(type="str", default="postgres"),
        connect_timeout=dict(type="int", default=10),
        docker_bin=dict(type="str", default="docker"),
    )


def require_psycopg2(module):
    if psycopg2 is None:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)


def validate_identifier(value, what="database name"):
    """Return `value` if it can be an identifier, else raise ValueError.

    Any character is allowed (it is always quoted), but empty names, NUL
    bytes and names PostgreSQL would silently truncate are refused.
    """
    if not isinstance(value, str) or value == "":
        raise ValueError("%s must be a non-empty string" % what)
    if "\x00" in value:
        raise ValueError("%s %r contains a NUL byte" % (what, value))
    if len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            "%s %r is longer than %d bytes; PostgreSQL would truncate it"
            % (what, value, MAX_IDENTIFIER_BYTES)
        )
    return value


def ident(*parts):
    """psycopg2 SQL identifier (schema-qualified when given several parts)."""
    return sql.Identifier(*parts)


def resolve_host(module):
    """login_host, or the database container's address when it is empty."""
    host = module.params.get("login_host")
    if host:
        return host
    container = module.params.get("db_container")
    if not container:
        module.fail_json(msg="set login_host or db_container so the module can reach PostgreSQL")
    try:
        return container_ip(module, container)
    except DockerError as exc:
        module.fail_json(msg=str(exc))


class ConnectError(Exception):
    """A connection could not be opened; the message is one line, without secrets."""


def is_auth_failure(message):
    text = message.lower()
    return (
        "password authentication failed" in text
        or "no password supplied" in text
        or "authentication failed for user" in text
    )


class Connector:
    """The one way the collection opens psycopg2 connections.

    Built from the module's connection options and a resolved host; raises
    `error` (ConnectError, or a caller's own exception class) with one line
    naming what failed, so it can also be used from worker threads, where
    failing the module is not possible.
    """

    error = ConnectError

    def __init__(self, params, host, application_name="qadhya.dbops", error=None, lock_timeout=None):
        self.host = host
        self.lock_timeout = lock_timeout
        self.port = params["login_port"]
        self.user = params["login_user"]
        if error is not None:
            self.error = error
        self.kwargs = dict(
            host=host,
            port=params["login_port"],
            user=params["login_user"],
            connect_timeout=params["connect_timeout"],
            application_name=application_name,
        )
        if params.get("login_password"):
            self.kwargs["password"] = params["login_password"]
        if lock_timeout:
            # Set at connection start, so that every statement of every session
            # opened here gives up (SQLSTATE 55P03) instead of queueing forever
            # behind another session's lock.
            self.kwargs["options"] = "-c lock_timeout=%s" % timeout_ms(lock_timeout)

    def open(self, dbname, autocommit=True):
        try:
            conn = psycopg2.connect(dbname=dbname, **self.kwargs)
        except psycopg2.Error as exc:
            reason = first_line(exc, "connection failed")
            if is_auth_failure(reason):
                raise self.error(
                    "password authentication failed for user '%s' on %s:%s; check "
                    "login_password / DB_PASSWORD in the env file" % (self.user, self.host, self.port)
                ) from None
            raise self.error(
                "cannot connect to database '%s' on %s:%s as '%s': %s; check the host, the "
                "credentials and that the database exists"
                % (dbname, self.host, self.port, self.user, reason)
            ) from None
        conn.autocommit = autocommit
        return conn


def connect(module, dbname=None, host=None, autocommit=True):
    """Open a psycopg2 connection; fail the module with a one-line reason."""
    require_psycopg2(module)
    connector = Connector(module.params, host or resolve_host(module))
    try:
        return connector.open(dbname or module.params["maintenance_db"], autocommit=autocommit)
    except ConnectError as exc:
        module.fail_json(msg=str(exc))
