"""Data situations, on one lab instance of this module's own.

The source is given, with psql in the instance, what real databases hold and
a naive copy loses: a partitioned table, a table owned by an extension and a
column of an extension's type, a table in another schema, names that need
quoting, a large object, sequences whose value must survive, a materialized
view. One consolidation (at -vvv, every process's argv sampled while it runs)
must bring every row, checksum, sequence value, large object and view over,
the backup it took must pass a restore comparison, and the password must
appear nowhere. Then the refusals: both databases empty, and an env file that
cannot be read.
"""

import json
import os
import re
import threading
import time

import pytest
from faultkit import blocked_databases, snapshot
from labkit import REPO, docker, host_vars, instance_name, run_playbook, wait_for, write_inventory

pytestmark = pytest.mark.integration

INSTANCE = instance_name("fdata")
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
ROLLBACK = REPO / "playbooks" / "rollback.yml"
SOURCE, TARGET = "moncabinet", "qadhya"

# Everything a consolidation must carry over, made with psql in the instance.
DATA_SQL = '''
CREATE TABLE measures (id int, taken date NOT NULL, value text) PARTITION BY RANGE (taken);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measures SELECT g, date '2025-06-01' + g, 'm' || g FROM generate_series(1, 400) g;
CREATE EXTENSION citext;
CREATE TABLE ext_owned (k citext PRIMARY KEY, v int);
INSERT INTO ext_owned VALUES ('Alpha', 1), ('beta', 2);
ALTER EXTENSION citext ADD TABLE ext_owned;
CREATE TABLE tags (name citext PRIMARY KEY);
INSERT INTO tags VALUES ('Droit'), ('fiscalité');
CREATE SCHEMA "Compta; 2026";
CREATE TABLE "Compta; 2026"."Écritures ""x""" (id serial PRIMARY KEY, "select" text, "Montant" numeric);
INSERT INTO "Compta; 2026"."Écritures ""x""" ("select", "Montant")
  SELECT 'ligne ' || g, g * 1.5 FROM generate_series(1, 25) g;
CREATE TABLE "Mixed Case" ("Key" text, "from" int);
INSERT INTO "Mixed Case" VALUES ('a', 1), ('b''c', 2);
CREATE SEQUENCE invoice_no START 1000;
SELECT setval('invoice_no', 4242);
SELECT lo_from_bytea(424242, convert_to('a large object, byte for byte', 'UTF8'));
CREATE MATERIALIZED VIEW kb_by_category AS SELECT category, count(*) AS n FROM knowledge_base GROUP BY 1;
'''

STATE_SQL = {
    "sequences": "SELECT schemaname || '.' || sequencename, coalesce(last_value, -1) FROM pg_sequences "
                 "ORDER BY 1",
    "large_objects": "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1",
    "matview": "SELECT category, n FROM kb_by_category ORDER BY 1",
    "matview_populated": "SELECT ispopulated FROM pg_matviews WHERE matviewname = 'kb_by_category'",
    "extension_member": "SELECT count(*) FROM pg_depend WHERE deptype = 'e' "
                        "AND objid = 'ext_owned'::regclass",
    "partitions": "SELECT relname FROM pg_class WHERE relispartition ORDER BY 1",
}


def state(lab, database):
    """Rows and checksums of every table, and what they do not show."""
    return dict(tables=snapshot(lab, database),
                **{key: lab.psql(database, query) for key, query in STATE_SQL.items()})


class ArgvSampler:
    """The argv (/proc/*/cmdline) of every process of the run under test, sampled
    until stopped: those holding `secret`, and how many distinct ones were seen.

    The run's processes are the ones whose environment holds `marker` (given to
    ansible-playbook, inherited by everything it starts) and the ones inside the
    lab's `containers` (pg_dump and psql run there by docker exec). Other
    processes on the host are left out: other test runs use the same lab password.
    """

    def __init__(self, secret, marker, containers):
        self.secret = secret.encode()
        self.marker = marker.encode()
        self.ids = [docker("inspect", "--format", "{{.Id}}", name).stdout.strip().encode()
                    for name in containers]
        self.leaks, self.seen, self.samples = [], set(), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _ours(self, path):
        try:
            with open(os.path.join(path, "environ"), "rb") as handle:
                if self.marker in handle.read():
                    return True
            with open(os.path.join(path, "cgroup"), "rb") as handle:
                cgroup = handle.read()
        except OSError:
            return False
        return any(cid in cgroup for cid in self.ids)

    def _run(self):
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(os.path.join(entry.path, "cmdline"), "rb") as handle:
                        argv = handle.read()
                except OSError:
                    continue
                if not argv or not self._ours(entry.path):
                    continue
                self.seen.add(argv[:200])
                if self.secret in argv:
                    self.leaks.append(argv.replace(b"\0", b" ").decode("utf-8", "replace"))
            self.samples += 1
            time.sleep(0.02)  # a sample takes a few ms; the machine under test needs the rest

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)


def inventory(lab, work, **extra):
    (work / "migrations").mkdir(exist_ok=True)  # no migration: every table must come out as it went in
    return write_inventory(work / "inventory.json", {"lab1": host_vars(
        lab.info, work, dbops_migrations_dir=str(work / "migrations"), dbops_health_timeout=90, **extra)})


def report_of(work):
    reports = sorted((work / "reports").glob("lab1-*.json"))
    assert reports, "no report written"
    return json.loads(reports[-1].read_text())


def server_ready(lab):
    proc = lab.docker("exec", lab.db, "psql", "-U", lab.info["db_user"], "-d", SOURCE, "-XAtc", "SELECT 1",
                      check=False)
    return proc.returncode == 0


@pytest.fixture
def lab(module_lab):
    module_lab.reset("--mode", "mounted")
    # the reset restarts the server; on a loaded machine the app answers before
    # the server is done, so wait for both, twice in a row
    for _attempt in range(2):
        assert wait_for(lambda: server_ready(module_lab), timeout=120)
        assert wait_for(lambda: module_lab.health()[0] is not None, timeout=60)
        time.sleep(1)
    yield module_lab


def hostile_env(lab):
    """The lab's env file rewritten as a Windows editor and a shell user would
    leave it: a BOM, CRLF line ends, `export`, quotes, comments (the lab app
    reads this form too). Replaced by rename, the way editors save."""
    values = dict(line.split("=", 1) for line in lab.env_file.read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    lines = ["\ufeff# settings of the app, edited on Windows", ""]
    for key, value in values.items():
        if key == "DB_NAME":
            lines += ["# the database the app uses", 'export DB_NAME="%s"' % value]
        elif key == "DB_HOST":
            lines.append("DB_HOST = '%s'" % value)
        else:
            lines.append("export %s=%s" % (key, value))
    lines += ["APP_TITLE='Qadhya' # shown in the header", ""]
    data = "\r\n".join(lines).encode("utf-8")
    tmp = lab.env_file.with_name(".env.hostile-tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(lab.env_file)
    return data


def test_every_kind_of_data_survives_a_consolidation_and_its_rollback_and_no_argv_holds_the_password(
        lab, tmp_path):
    lab.psql(SOURCE, DATA_SQL)
    env_before = hostile_env(lab)
    lab.docker("restart", "-t", "2", lab.app)  # the app reads its env file at start
    assert wait_for(lambda: lab.health()[0] is not None, timeout=60)
    assert lab.health()[1]["database"] == TARGET  # the incident, read through the hostile form
    before = state(lab, SOURCE)
    assert before["sequences"][0][1] and ["public.invoice_no", "4242"] in before["sequences"]
    assert before["extension_member"] == [["1"]] and len(before["large_objects"]) == 1
    password = lab.info["db_password"]
    # the run's own backup is restored into a scratch database and compared table by table
    inv = inventory(lab, tmp_path, dbops_backup_verify="restore")

    marker = "QADHYA_FAULT_RUN=%s" % tmp_path.name
    sampler = ArgvSampler(password, marker, [lab.db, lab.app])
    try:
        proc = run_playbook(PLAYBOOK, inv, "-vvv", env={"QADHYA_FAULT_RUN": tmp_path.name})
    finally:
        sampler.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    report = report_of(tmp_path)
    assert report["result"] == "success", report["message"]

    # every kind of data arrived, byte for byte
    after = state(lab, TARGET)
    assert after == before
    assert SOURCE not in [r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database")]
    assert blocked_databases(lab) == []
    status, body = lab.health()
    assert status == 200 and body["database"] == TARGET, (status, body)
    # repointed to the source, then to the target: two rewrites of the hostile
    # file, and every byte but the value is as it was (here the value is too)
    assert lab.env_file.read_bytes() == env_before
    previous = [p.read_bytes() for p in lab.env_file.parent.iterdir()
                if p.name.startswith(".env.") and p.name.endswith("~")]
    assert env_before.replace(b'DB_NAME="qadhya"', b'DB_NAME="moncabinet"') in previous, previous

    # the run's own backup of the source passes a restore comparison
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "backups").glob("*.manifest.json")]
    source_backup = [m for m in manifests if m["database"] == SOURCE]
    assert source_backup, manifests
    manifest = source_backup[0]
    assert manifest["row_counts"]["measures"] == 400 and "measures_2025" not in manifest["row_counts"]
    assert manifest["row_counts"]['Compta; 2026.Écritures "x"'] == 25
    assert "ext_owned" not in manifest["row_counts"]  # not the app's data: pg_dump leaves it to the extension
    assert manifest["verified"]["level"] == "restore" and manifest["verified"]["ok"], manifest["verified"]

    # the password: in no process's argv while the run went on, nor in its output or files
    assert sampler.samples > 50 and len(sampler.seen) > 20, (sampler.samples, len(sampler.seen))
    assert any(b"pg_dump" in argv for argv in sampler.seen), "the sampler never saw the dump"
    assert sampler.leaks == []
    assert password not in out
    written = [p for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix in (".json", ".md", ".log", ".lock")]
    assert any(p.parent.name == "journal" for p in written), written
    for path in written:
        assert password.encode() not in path.read_bytes(), path
    for path in [tmp_path / "backups" / "journal"] + list((tmp_path / "backups").glob("*")):
        if path.exists() and path.name != "journal":
            assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
    for path in (tmp_path / "backups" / "journal").glob("*.json"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    env_backups = [p for p in lab.env_file.parent.iterdir()
                   if p.name.startswith(".env.") and p.name.endswith("~")]
    assert env_backups and all(p.stat().st_mode & 0o077 == 0 for p in env_backups), env_backups

    # Then back through rollback.yml at -vvv, sampled the same way: every kind of data under the
    # old name again, and the password in no argv of the rollback either. It goes back to the run's
    # last checkpoint, the app repointed at its data (decision 0001), not to the incident: the
    # hostile env file as the repoint wrote it, byte for byte, and the app healthy on moncabinet.
    time.sleep(1)  # reports are named by the second they start in
    sampler = ArgvSampler(password, marker, [lab.db, lab.app])
    try:
        back = run_playbook(ROLLBACK, inv, "-vvv", env={"QADHYA_FAULT_RUN": tmp_path.name})
    finally:
        sampler.close()
    out = back.stdout + back.stderr
    assert back.returncode == 0, out[-6000:]
    assert report_of(tmp_path)["result"] == "rolled_back", report_of(tmp_path)["message"]
    assert state(lab, SOURCE) == before
    assert lab.env_file.read_bytes() == env_before.replace(b'DB_NAME="qadhya"', b'DB_NAME="moncabinet"')
    status, body = lab.health()
    assert status == 200 and body["database"] == SOURCE, (status, body)
    assert TARGET in [r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database")]
    assert blocked_databases(lab) == []
    assert sampler.samples > 20 and sampler.leaks == [], (sampler.samples, sampler.leaks)
    assert password not in out


def test_both_databases_empty_is_refused_changing_nothing(lab, tmp_path):
    tables = [r[0] for r in lab.psql(SOURCE, "SELECT quote_ident(tablename) FROM pg_tables "
                                             "WHERE schemaname = 'public'")]
    lab.psql(SOURCE, "TRUNCATE %s" % ", ".join(tables))
    env_before = lab.env_file.read_bytes()
    proc = run_playbook(PLAYBOOK, inventory(lab, tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    message = report_of(tmp_path)["message"]
    assert report_of(tmp_path)["result"] == "failed" and "\n" not in message, message
    assert re.search(r"no database holds (the app's )?data", message), message
    assert lab.env_file.read_bytes() == env_before
    names = lab.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate")
    assert sorted(r[0] for r in names) == ["moncabinet", "postgres", "qadhya"]
    assert not list((tmp_path / "backups").glob("*.dump")) if (tmp_path / "backups").exists() else True


def test_an_env_file_that_cannot_be_read_is_refused_at_the_pre_check(lab, tmp_path):
    """A directory where the env file should be (as root, mode 000 would still be
    readable): refused before anything, one line naming the path."""
    env_dir = tmp_path / "env-is-a-directory"
    env_dir.mkdir()
    (tmp_path / "migrations").mkdir()
    inv = write_inventory(tmp_path / "inventory.json", {"lab1": host_vars(
        lab.info, tmp_path, dbops_env_file=str(env_dir), dbops_migrations_dir=str(tmp_path / "migrations"))})
    before = snapshot(lab, SOURCE)
    proc = run_playbook(PLAYBOOK, inv)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert str(env_dir) in out and "env file" in out, out[-4000:]
    assert lab.info["db_password"] not in out
    assert snapshot(lab, SOURCE) == before
    assert not list((tmp_path / "backups").glob("*.dump")) if (tmp_path / "backups").exists() else True
