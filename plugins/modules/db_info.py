#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: db_info
short_description: Find which database holds the data and whether the app points at it
version_added: 0.1.0
description:
  - Lists the databases of a PostgreSQL server, counts the rows of every table
    in each of them, and reads the application's env file to tell plainly which
    database holds the data, which one the application is configured for, and
    whether they disagree.
  - Reports expected tables that are missing (unapplied migrations) and the
    content of the migrations tracking table.
  - Each database is read in a single C(REPEATABLE READ READ ONLY) transaction,
    so its counts form one consistent snapshot; several databases are read in
    parallel, one connection each.
  - This module never changes anything and fully supports check mode.
author:
  - qadhya platform team (@qadhya)
extends_documentation_fragment:
  - qadhya.dbops.connection
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.INFO
options:
  databases:
    description:
      - Databases to inspect. Each must exist and accept connections.
      - Empty means every database that accepts connections, templates excepted.
      - The database named in O(env_file) is always inspected as well when it exists.
    type: list
    elements: str
    default: []
  expected_tables:
    description:
      - Tables that must exist in every inspected database, as C(table) (schema
        C(public)) or C(schema.table); use double quotes around a part that
        contains a dot.
      - Missing ones are listed per database in RV(databases[].missing_tables),
        which is how an unapplied migration shows up.
      - Views, materialized views and foreign tables also satisfy the check.
    type: list
    elements: str
    default: []
  count:
    description:
      - How rows are counted.
      - V(exact) runs C(count(*)) on every table.
      - V(estimate) reads the planner statistics (C(pg_class.reltuples)); instant,
        but only as fresh as the last C(ANALYZE).
      - V(auto) counts exactly unless the estimate exceeds O(exact_max_rows).
      - A table that was never analyzed has no estimate and is always counted exactly.
      - Each table reports the method used.
    type: str
    choices: [exact, estimate, auto]
    default: exact
  exact_max_rows:
    description: With O(count=auto), tables estimated above this many rows use the estimate.
    type: int
    default: 10000000
  checksum_tables:
    description:
      - Tables whose content checksum to compute, named like O(expected_tables).
      - The checksum is the row count and an order-independent sum of
        C(hashtext()) of every row. It detects changed content cheaply (for
        example before and after an operation on the same server); it is not
        cryptographic and is only comparable between servers of the same major version.
      - It reads the whole table.
      - V(*) alone means every counted table of each inspected database (see
        RV(databases[].tables)); the tables are listed just before the
        inspection, then checksummed in the same snapshot as the counts. A table
        named C(*) is written C('"*"').
    type: list
    elements: str
    default: []
  env_file:
    description:
      - Path, on the host the module runs on, of the application's env file
        (C(KEY=VALUE) lines, optional C(export) prefix, single or double quotes, C(#) comments).
      - Keys whose name contains C(PASS) (C(PASSWORD), C(PASSWD)...), C(PWD), C(SECRET),
        C(TOKEN), C(KEY), C(CREDENTIAL) or C(PRIVATE) are reported by name only
        (RV(env_secret_keys)), never their value; a password inside a URL value is masked.
    type: path
  env_db_key:
    description: Key of O(env_file) that names the application's database.
    type: str
    default: DB_NAME
  data_tables:
    description:
      - Tables whose rows mean "this database holds the application's data",
        named like O(expected_tables).
      - Empty means any table with rows, except the migrations table.
      - A table that belongs to an extension never counts (it is not listed at all).
    type: list
    elements: str
    default: []
  migrations_table:
    description: Table tracking applied migrations, named like O(expected_tables).
    type: str
    default: _migrations
  parallel:
    description: How many databases are inspected at the same time (one connection each).
    type: int
    default: 4
  app_container:
    description:
      - Name of the application's container, whose state is reported in RV(app_container), so that a
        run's pre-check reads the database, the env file and both containers in one call.
      - Of its C(Config.Env) (which holds secrets too) only the value of O(env_db_key) is read.
    type: str
    version_added: 0.2.0
  health_url:
    description:
      - The app's health URL, read once (GET, 5 s timeout, safe redirects followed), its status reported in
        RV(app_health) - whether the app serves now, which is what a run owes it back if it must undo.
    type: str
    version_added: 0.2.0
  health_validate_certs:
    description: Verify the TLS certificate of an C(https) O(health_url).
    type: bool
    default: true
    version_added: 0.2.0
  backup_dir:
    description:
      - Directory on the host the module runs on whose free space is reported in RV(backup_dir), for a
        run that must back up a database before it changes anything. It need not exist yet (the free
        space of its nearest existing parent is read). Nothing is written.
    type: path
    version_added: 0.2.0
  lock_wait_timeout:
    description:
      - Seconds any statement of the module waits for a lock held by another
        session (PostgreSQL C(lock_timeout), set on every session the module
        opens) before the module stops.
      - Counting needs only C(ACCESS SHARE), which only an C(ACCESS EXCLUSIVE)
        lock (C(LOCK TABLE), C(ALTER TABLE), C(VACUUM FULL), C(TRUNCATE)...) blocks;
        the failure names the sessions holding or queued for one (pid,
        application, user, state, since when) and the tables.
    type: float
    default: 5
    version_added: 0.2.0
notes:
  - Supports check mode; nothing is ever written.
  - The role needs C(CONNECT) on each inspected database and C(SELECT) on its tables;
    a superuser or the owner of the databases is simplest.
seealso:
  - module: qadhya.dbops.db_rename
"""

EXAMPLES = r"""
- name: Find where the data lives and what the app is configured for
  qadhya.dbops.db_info:
    db_container: qadhya-postgres
    login_user: moncabinet
    login_password: "{{ vault_db_password }}"
    env_file: /opt/moncabinet/.env
    expected_tables: [user_validation_stats]
    data_tables: [knowledge_base]
  register: dbinfo

- name: Stop when the app does not point at the data
  ansible.builtin.assert:
    that: not dbinfo.mismatch
    fail_msg: "{{ dbinfo.summary }}"

- name: Fingerprint two tables before an operation, with estimated counts elsewhere
  qadhya.dbops.db_info:
    login_host: 10.0.0.5
    login_user: postgres
    login_password: "{{ vault_db_password }}"
    databases: [qadhya]
    count: auto
    exact_max_rows: 5000000
    checksum_tables: [knowledge_base, audit.events]
  register: before
"""

RETURN = r"""
server_version:
  description: Version of the PostgreSQL server.
  returned: always
  type: str
  sample: "15.10 (Debian 15.10-0+deb12u1)"
server_encoding:
  description:
    - The encoding of O(maintenance_db) (its C(server_encoding)), which PostgreSQL converts a
      database's new name into when it is renamed from there; only C(UTF8) and C(SQL_ASCII) store a
      UTF-8 name byte for byte.
  returned: always
  type: str
  sample: UTF8
databases:
  description: Inventory of each inspected database, keyed by name.
  returned: always
  type: dict
  contains:
    owner:
      description: Owner role.
      type: str
    encoding:
      description: Character encoding.
      type: str
    collate:
      description: C(LC_COLLATE) of the database.
      type: str
    size_bytes:
      description: Size on disk (null without C(CONNECT) privilege).
      type: int
    connections:
      description: Sessions connected to it when the inventory started.
      type: int
    allow_connections:
      description: Whether it accepts connections.
      type: bool
    tables:
      description:
        - Row count per table, keyed by bare name in schema C(public) and
          C(schema.table) elsewhere; C(method) is C(exact) or C(estimate).
        - The tables are the ones M(qadhya.dbops.db_backup) records in its manifests and compares
          after a restore - ordinary and partitioned tables, each counted once (a partitioned
          table with all its partitions' rows, the partitions not listed; an ordinary table
          without its inheritance children, which are listed on their own). Tables owned by an
          extension (for example C(spatial_ref_sys)) are not listed.
      type: dict
      sample: {"knowledge_base": {"rows": 580, "method": "exact"}}
    total_rows:
      description: Sum of the rows of all tables.
      type: int
    has_data:
      description: Whether it holds the application's data (see O(data_tables)).
      type: bool
    missing_tables:
      description: Entries of O(expected_tables) that do not exist.
      type: list
      elements: str
    migrations:
      description:
        - The migrations table. C(table_exists), C(count) and C(rows) (every
          column of up to 1000 rows, as dicts, ordered by the first column).
      type: dict
      sample: {"table_exists": true, "count": 0, "rows": []}
    checksums:
      description:
        - Per O(checksum_tables) entry, C(rows) and C(checksum) (C(rows:hashsum));
          a table that does not exist has C(missing=true) and null values.
      type: dict
      sample: {"knowledge_base": {"rows": 580, "checksum": "580:-1234567890"}}
    elapsed_ms:
      description: Time spent inspecting this database.
      type: int
  sample:
    moncabinet:
      owner: moncabinet
      encoding: UTF8
      collate: C.UTF-8
      size_bytes: 31457280
      connections: 0
      allow_connections: true
      tables: {"knowledge_base": {"rows": 580, "method": "exact"}}
      total_rows: 580
      has_data: true
      missing_tables: [user_validation_stats]
      migrations: {"table_exists": true, "count": 0, "rows": []}
      checksums: {}
      elapsed_ms: 41
data_databases:
  description: Inspected databases that hold data, sorted.
  returned: always
  type: list
  elements: str
  sample: [moncabinet]
server_databases:
  description: Every database on the server, templates excepted.
  returned: always
  type: list
  elements: str
  sample: [moncabinet, postgres, qadhya]
configured_database:
  description: Value of O(env_db_key) in O(env_file); null without an env file or key.
  returned: always
  type: str
  sample: qadhya
configured_exists:
  description: Whether RV(configured_database) exists on the server.
  returned: always
  type: bool
mismatch:
  description: True when the configured database holds no data while another one does.
  returned: always
  type: bool
summary:
  description: One line for a person.
  returned: always
  type: str
  sample: >-
    data in 'moncabinet' (580 rows in knowledge_base, 6 in web_sources, 2 in users);
    app configured for 'qadhya' which is empty — they disagree
env:
  description: Keys and values of O(env_file) that are not secrets.
  returned: always
  type: dict
  sample: {"DB_NAME": "qadhya", "DB_USER": "moncabinet", "DB_HOST": "postgres", "DB_PORT": "5432"}
env_secret_keys:
  description: Names of the secret keys present in O(env_file); values are never returned.
  returned: always
  type: list
  elements: str
  sample: [DB_PASSWORD]
db_address:
  description: The address the module reached PostgreSQL at (O(login_host), else the database container's).
  returned: always
  type: str
  sample: 172.18.0.2
app_container:
  description:
    - The state of O(app_container) - C(exists); then Docker's C(status) (C(running), C(exited),
      C(paused), C(dead)...), C(running) (Docker's own flag, true for a paused container too), the
      C(compose_project) label (empty when the container is not a Compose service), and
      C(env_at_creation), the value of O(env_db_key) in its C(Config.Env) (null when it has none).
  returned: when O(app_container) is given
  type: dict
  sample: {"name": "qadhya-nextjs", "exists": true, "status": "running", "running": true,
           "compose_project": "", "env_at_creation": null}
app_health:
  description:
    - The C(url) of O(health_url), the HTTP C(status) it answered (null when it did not answer), and the
      C(error) when it did not.
  returned: when O(health_url) is given
  type: dict
  sample: {"url": "http://127.0.0.1:3000/api/health", "status": 200, "error": ""}
backup_dir:
  description: The C(path) of O(backup_dir) and the C(free_bytes) of the volume it is (or will be) on.
  returned: when O(backup_dir) is given
  type: dict
  sample: {"path": "/var/backups/qadhya", "free_bytes": 21474836480}
elapsed_ms:
  description: Wall time of the whole inventory.
  returned: always
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._connection import (
    connection_argument_spec,
    require_psycopg2,
    resolve_host,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._backup_files import free_bytes
from ansible_collections.qadhya.dbops.plugins.module_utils._catalog import counted_tables, list_relations
from ansible_collections.qadhya.dbops.plugins.module_utils._docker import DockerError, container_state
from ansible_collections.qadhya.dbops.plugins.module_utils._inventory import (
    MIGRATIONS_TABLE,
    Connector,
    InventoryError,
    decide,
    inspect_all,
    list_databases,
    read_env_file,
    select_databases,
    server_version,
    split_env,
    split_qualified,
    table_key,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._lock_wait import holders_of, lock_wait_message

ALL_TABLES = "*"


class DbInfo:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.checksum_all = False

    def _tables(self, option):
        try:
            return [split_qualified(name) for name in self.params[option]]
        except ValueError as exc:
            self.module.fail_json(msg="%s: %s" % (option, exc))

    def _all_tables(self, connector, names):
        """{name: every counted (schema, table)} of each database, for checksum_tables '*'."""
        result = {}
        for name in names:
            conn = connector.open(name)
            try:
                with conn.cursor() as cur:
                    result[name] = counted_tables(list_relations(cur))
            finally:
                conn.close()
        return result

    def _inspect(self, connector, names, options):
        """inspect_all, or one database at a time when each has its own checksum list;
        a lock wait that timed out names the sessions that held the lock."""
        try:
            if not self.checksum_all:
                return inspect_all(connector, names, options, self.params["parallel"])
            per_db = self._all_tables(connector, names)
            result = {}
            for name in names:
                result.update(inspect_all(connector, [name], dict(options, checksum=per_db[name]), 1))
            return result
        except InventoryError as exc:
            if "lock timeout" not in str(exc):
                raise
            blocked = [(name, rows) for name in names for rows in [holders_of(connector, name)] if rows]
            if not blocked:
                raise
            raise InventoryError("; ".join(
                lock_wait_message("counting the rows of '%s'" % name, self.params["lock_wait_timeout"], rows)
                for name, rows in blocked)) from None

    def run(self):
        started = time.monotonic()
        params = self.params
        if params["parallel"] < 1:
            self.module.fail_json(msg="parallel must be 1 or more")
        if params["lock_wait_timeout"] <= 0:
            self.module.fail_json(msg="lock_wait_timeout must be more than 0 seconds")
        self.checksum_all = params["checksum_tables"] == [ALL_TABLES]
        options = dict(
            count=params["count"],
            exact_max_rows=params["exact_max_rows"],
            expected=self._tables("expected_tables"),
            checksum=[] if self.checksum_all else self._tables("checksum_tables"),
            data_tables=[table_key(*t) for t in self._tables("data_tables")],
        )
        try:
            options["migrations"] = split_qualified(params["migrations_table"])
        except ValueError as exc:
            self.module.fail_json(msg="migrations_table: %s" % exc)

        env = {}
        configured = None
        if params["env_file"]:
            env = read_env_file(params["env_file"])
            configured = env.get(params["env_db_key"]) or None
        public_env, secret_keys = split_env(env)

        require_psycopg2(self.module)
        address = resolve_host(self.module)
        connector = Connector(params, address, lock_timeout=params["lock_wait_timeout"])
        conn = connector.open(params["maintenance_db"])
        try:
            with conn.cursor() as cur:
                version, encoding = server_version(cur)
                server = list_databases(cur)
        finally:
            conn.close()

        names = select_databases(server, params["databases"])
        extra = server.get(configured) if configured and configured not in names else None
        if extra and extra["allow_connections"]:
            names.append(configured)

        inventory = self._inspect(connector, names, options)
        databases = {}
        for name in names:
            info = dict(server[name])
            info.pop("is_template", None)
            info.update(inventory[name])
            databases[name] = info

        server_names = sorted(n for n, i in server.items() if not i["is_template"])
        verdict = decide(databases, configured, server_names, env_given=bool(params["env_file"]))
        parts = {}
        if params["app_container"]:
            parts["app_container"] = self._app_container(params["app_container"])
        if params["health_url"]:
            # Imported only when asked: its HTTP client is most of _container's import time, which every
            # other db_info call (check.yml, backup.yml) would pay for nothing.
            from ansible_collections.qadhya.dbops.plugins.module_utils._container import HealthProbe

            status, _body, error = HealthProbe(params["health_validate_certs"])(params["health_url"], 5)
            parts["app_health"] = dict(url=params["health_url"], status=status, error=error)
        if params["backup_dir"]:
            parts["backup_dir"] = dict(path=params["backup_dir"], free_bytes=free_bytes(params["backup_dir"]))
        return dict(
            changed=False,
            server_version=version,
            server_encoding=encoding,
            databases=databases,
            server_databases=server_names,
            configured_database=configured,
            env=public_env,
            env_secret_keys=secret_keys,
            db_address=address,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            **dict(verdict, **parts)
        )

    def _app_container(self, name):
        key = self.params["env_db_key"]
        try:
            state = container_state(self.module, name, env_keys=(key,))
        except DockerError as exc:
            raise InventoryError(str(exc)) from None
        if state is None:
            return dict(name=name, exists=False)
        return dict(name=name, exists=True, status=state["status"], running=state["running"],
                    compose_project=state["labels"].get("com.docker.compose.project", ""),
                    env_at_creation=state["env"].get(key))


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        databases=dict(type="list", elements="str", default=[]),
        expected_tables=dict(type="list", elements="str", default=[]),
        count=dict(type="str", choices=["exact", "estimate", "auto"], default="exact"),
        exact_max_rows=dict(type="int", default=10000000),
        checksum_tables=dict(type="list", elements="str", default=[]),
        env_file=dict(type="path"),
        env_db_key=dict(type="str", default="DB_NAME", no_log=False),
        data_tables=dict(type="list", elements="str", default=[]),
        migrations_table=dict(type="str", default=MIGRATIONS_TABLE),
        parallel=dict(type="int", default=4),
        lock_wait_timeout=dict(type="float", default=5.0),
        app_container=dict(type="str"),
        backup_dir=dict(type="path"),
        health_url=dict(type="str"),
        health_validate_certs=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = DbInfo(module).run()
    except InventoryError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
