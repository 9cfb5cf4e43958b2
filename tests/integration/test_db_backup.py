# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qadhya.dbops.db_backup through real ansible-playbook runs against a lab instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import labkit
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def sha256sum(path):
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class Runner:
    """Runs qadhya.dbops.db_backup as one playbook task; returns the task result."""

    def __init__(self, lab, tmp):
        self.lab = lab
        self.tmp = tmp
        self.count = 0

    def __call__(self, check=False, module="db_backup", task_env=None, **args):
        base = {} if module == "db_backup_info" else dict(
            db_container=self.lab.db, login_user=self.lab.info["db_user"],
            login_password=self.lab.info["db_password"])
        base.update(args)
        self.count += 1
        play = [dict(hosts="localhost", gather_facts=False, tasks=[
            dict(name="backup", **{"qadhya.dbops." + module: base}, check_mode=check, no_log=False,
                 environment=task_env or {}),
        ])]
        book = self.tmp / ("play%d.yml" % self.count)
        book.write_text(json.dumps(play))
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
                   ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
             "-e", "ansible_python_interpreter=%s" % sys.executable, str(book)],
            cwd=REPO, capture_output=True, text=True, env=env, check=False, timeout=300,
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            pytest.fail("ansible-playbook output is not JSON: %s %s"
                        % (proc.stdout[-2000:], proc.stderr[-2000:]))
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
        assert self.lab.info["db_password"] not in proc.stdout
        return result


@pytest.fixture(scope="module")
def lab(lab_instance):
    return lab_instance


@pytest.fixture
def run(lab, tmp_path):
    return Runner(lab, tmp_path)


def scratch_dbs(lab):
    return lab.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'dbops_verify_%'")


@pytest.fixture(scope="module")
def custom_backup(lab, tmp_path_factory):
    """check mode (nothing written) then a real custom backup verified by restore."""
    tmp = tmp_path_factory.mktemp("custom")
    run = Runner(lab, tmp)
    dest = tmp / "backups"
    # level 1 keeps the test fast; the format and the checks are the same
    planned = run(check=True, database="moncabinet", dest_dir=str(dest), verify="restore",
                  compression_level=1)
    assert planned["changed"] is True and not planned.get("failed"), planned
    assert not dest.exists()
    assert Path(planned["path"]).parent == dest and planned["path"].endswith(".dump")
    assert planned["free_space"]["ok"] is True and planned["estimated_bytes"] > 0

    result = run(database="moncabinet", dest_dir=str(dest), verify="restore", compression_level=1)
    assert result["changed"] is True and not result.get("failed"), result.get("msg")
    return dest, result


def test_create_custom_writes_private_verified_backup(lab, custom_backup):
    dest, result = custom_backup
    path = Path(result["path"])
    manifest_file = Path(result["manifest_path"])
    assert mode(dest) == 0o700
    assert mode(path) == 0o600 and mode(manifest_file) == 0o600
    assert sorted(os.listdir(dest)) == sorted([path.name, manifest_file.name])  # no partial left
    assert path.read_bytes()[:5] == b"PGDMP"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["tool"] == "qadhya.dbops" and manifest["manifest_version"] == 1
    assert manifest["row_counts"]["knowledge_base"] == 580
    assert manifest["row_counts"]["users"] == 2
    assert manifest["row_counts"]["web_sources"] == 6
    assert manifest["row_counts"]["ai_usage_logs"] == 0
    assert manifest["sha256"] == result["sha256"] == sha256sum(path)
    assert manifest["bytes"] == result["bytes"] == path.stat().st_size
    assert manifest["verified"]["level"] == "restore" and manifest["verified"]["ok"] is True
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL) 15")
    assert lab.info["db_password"] not in manifest_file.read_text()
    assert "PGPASSWORD" in result["cmd"] and lab.info["db_password"] not in " ".join(result["cmd"])
    verified = result["verified"]
    assert verified["ok"] is True and verified["details"]["checked"] == "restore"
    assert verified["details"]["tables_compared"] >= 5
    assert result["throughput_mb_s"] > 0
    assert scratch_dbs(lab) == []


def test_verify_action_checks_and_is_never_changed(run, custom_backup):
    dest, created = custom_backup
    for check in (True, False, False):  # check mode, real run, rerun
        result = run(check=check, action="verify", path=created["path"], verify="structure")
        assert result["changed"] is False and not result.get("failed"), result.get("msg")
        assert result["verified"]["ok"] is True
        assert result["verified"]["details"]["table_data_entries"] >= 5
        assert result["sha256"] == created["sha256"]


def test_flipped_byte_fails_checksum_and_structure(run, custom_backup, tmp_path):
    dest, created = custom_backup
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_dir / Path(created["path"]).name
    shutil.copy(created["path"], bad)
    shutil.copy(created["manifest_path"], str(bad) + ".manifest.json")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    for level in ("checksum", "structure"):
        result = run(action="verify", path=str(bad), verify=level)
        assert result.get("failed") is True, result
        assert result["msg"].startswith("checksum mismatch for %s" % bad)
        assert result["verified"]["ok"] is False
        assert result["changed"] is False
    assert sha256sum(created["path"]) == created["sha256"]  # the original is untouched


def test_manifest_claiming_an_extra_row_fails_restore_verification(lab, run, custom_backup, tmp_path):
    dest, created = custom_backup
    lost = tmp_path / "lost"
    lost.mkdir()
    copy = lost / Path(created["path"]).name
    shutil.copy(created["path"], copy)
    manifest = json.loads(Path(created["manifest_path"]).read_text())
    manifest["row_counts"]["knowledge_base"] += 1
    Path(str(copy) + ".manifest.json").write_text(json.dumps(manifest))

    result = run(action="verify", path=str(copy), verify="restore")
    assert result.get("failed") is True
    assert "table knowledge_base: manifest 581 rows, restored 580 rows" in result["msg"]
    assert "\n" not in result["msg"]
    assert result["verified"]["details"]["checked"] == "structure"  # checksum and structure passed
    assert scratch_dbs(lab) == []


def test_manifest_checksums_prove_each_table_and_old_manifests_restore(lab, run, custom_backup, tmp_path):
    dest, created = custom_backup
    manifest = json.loads(Path(created["manifest_path"]).read_text())
    # Every counted table has its content checksum, from the dump's own snapshot, in db_info's form.
    assert set(manifest["checksums"]) == set(manifest["row_counts"])
    assert created["checksums"] == manifest["checksums"]
    assert manifest["checksums"]["knowledge_base"].startswith("580:")
    assert "TimeZone=UTC" in manifest["checksum_method"]
    assert created["verified"]["details"]["compared"] == "counts and checksums"
    info, _out = labkit.run_module("db_info", lab.login_args(databases=["moncabinet"], checksum_tables=["*"]))
    sums = info["databases"]["moncabinet"]["checksums"]
    assert {key: value["checksum"] for key, value in sums.items()} == manifest["checksums"]

    def copy_with(name, edit):
        where = tmp_path / name
        where.mkdir()
        copy = where / Path(created["path"]).name
        shutil.copy(created["path"], copy)
        changed = json.loads(json.dumps(manifest))
        edit(changed)
        Path(str(copy) + ".manifest.json").write_text(json.dumps(changed))
        return str(copy)

    # Same row count, other content: the restore names the table, and the database it created is gone.
    rows, total = manifest["checksums"]["users"].split(":")
    other = copy_with("other", lambda m: m["checksums"].update(users="%s:%d" % (rows, int(total) + 1)))
    target = "qc_checksum_restored"
    result = run(action="restore", path=other, restore_target=target)
    assert result.get("failed") is True and "\n" not in result["msg"]
    assert "table users: 2 rows in both, content differs (checksum manifest 2:%d, restored %s)" % (
        int(total) + 1, manifest["checksums"]["users"]) in result["msg"], result["msg"]
    assert lab.psql("postgres", "SELECT 1 FROM pg_database WHERE datname = '%s'" % target) == []

    # A manifest written before the checksums: restored and compared by counts, and said so.
    old = copy_with("old", lambda m: [m.pop("checksums"), m.pop("checksum_method")])
    try:
        result = run(action="restore", path=old, restore_target=target)
        assert result["changed"] is True and not result.get("failed"), result.get("msg")
        assert result["compared"] == "counts" and result["checksums_after"] == {}
        assert "the manifest holds no content checksums, so only counts were compared" in result["msg"]
        assert result["row_counts_after"]["knowledge_base"] == 580
    finally:
        lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % target)
    assert scratch_dbs(lab) == []


def test_plain_gzip_is_standard_gzip_with_matching_sha_copy_and_prune(run, tmp_path):
    dest = tmp_path / "gz"
    dest.mkdir(mode=0o700)
    old = labkit.fake_backup(dest, "moncabinet", "moncabinet", "20250101T000000Z")
    (dest / "moncabinet-20250102T000000Z.sql.gz").write_bytes(b"not ours")
    offsite = tmp_path / "offsite"
    result = run(database="moncabinet", dest_dir=str(dest), format="plain_gzip", verify="structure",
                 compression_level=1, copy_to=str(offsite), prune=True, retention_days=30, retention_keep=1)
    assert not result.get("failed"), result.get("msg")
    path = Path(result["path"])
    assert [Path(p).name for p in result["deleted"]] == [old]
    assert sorted(os.listdir(dest)) == sorted([path.name, path.name + ".manifest.json",
                                               "moncabinet-20250102T000000Z.sql.gz"])
    copy = offsite / path.name
    assert mode(offsite) == 0o700 and mode(copy) == 0o600
    assert sha256sum(copy) == result["sha256"]
    copied_manifest = (offsite / (path.name + ".manifest.json")).read_bytes()
    assert copied_manifest == Path(result["manifest_path"]).read_bytes()
    assert path.name.endswith(".sql.gz")
    assert subprocess.run(["gzip", "-t", str(path)], check=False).returncode == 0
    manifest = json.loads(Path(result["manifest_path"]).read_text())
    assert manifest["sha256"] == sha256sum(path)
    assert manifest["compression"] == {"method": "gzip", "level": 1}
    assert result["verified"]["details"]["completion_marker"] is True
    sql = subprocess.run(["sh", "-c", "gzip -dc '%s' | grep -c 'COPY public.knowledge_base'" % path],
                         capture_output=True, text=True, check=False).stdout.strip()
    assert sql == "1"


@pytest.mark.parametrize("where", ["host", "container"])
def test_plain_zstd_round_trip_with_zstd_on_the_host_or_only_in_the_container(lab, run, tmp_path, where):
    # zstd runs on the Docker host when it has one (the SQL crosses docker exec once), else in the
    # database container: a PATH without zstd leaves the module only the container's.
    if shutil.which("zstd") is None:
        pytest.skip("no zstd on this Docker host")
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("docker", "sh"):
        (bare / tool).symlink_to(shutil.which(tool))
    dest = tmp_path / "zst"
    target = "restored_zstd_%s" % where
    env = {} if where == "host" else {"task_env": {"PATH": str(bare)}}
    try:
        result = run(database="moncabinet", dest_dir=str(dest), format="plain_zstd", verify="restore",
                     compression_level=3, **env)
        assert not result.get("failed"), result.get("msg")
        path = Path(result["path"])
        assert path.name.endswith(".sql.zst") and mode(path) == 0o600
        assert subprocess.run(["zstd", "-q", "-t", str(path)], check=False).returncode == 0
        manifest = json.loads(Path(result["manifest_path"]).read_text())
        assert manifest["sha256"] == sha256sum(path) and manifest["compression"]["method"] == "zstd"
        assert result["verified"]["ok"] is True and result["verified"]["level"] == "restore"
        restored = run(action="restore", path=str(path), restore_target=target, **env)
        assert restored["changed"] is True and not restored.get("failed"), restored.get("msg")
        assert lab.psql(target, "SELECT count(*) FROM knowledge_base") == [["580"]]
        assert restored["row_counts_after"] == manifest["row_counts"]
    finally:
        lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % target)


def test_restore_into_new_database_then_idempotent(lab, run, custom_backup):
    dest, created = custom_backup
    target = 'restored "db"; ok'
    try:
        planned = run(check=True, action="restore", path=created["path"], restore_target=target)
        assert planned["changed"] is True and not planned.get("failed"), planned.get("msg")
        assert lab.psql("postgres", "SELECT 1 FROM pg_database WHERE datname = 'restored \"db\"; ok'") == []
        result = run(action="restore", path=created["path"], restore_target=target)
        assert result["changed"] is True and not result.get("failed"), result.get("msg")
        assert result["row_counts_after"]["knowledge_base"] == 580
        assert lab.psql(target, "SELECT count(*) FROM knowledge_base") == [["580"]]
        again = run(action="restore", path=created["path"], restore_target=target)
        assert again["changed"] is False and not again.get("failed"), again.get("msg")
        # a database holding other tables is never overwritten
        other = run(action="restore", path=created["path"], restore_target="qadhya")
        assert other.get("failed") is True and "already exists" in other["msg"], other
        assert lab.psql("qadhya", "SELECT count(*) FROM knowledge_base") == [["0"]]
    finally:
        lab.psql("postgres", 'DROP DATABASE IF EXISTS "restored ""db""; ok" WITH (FORCE)')


# --------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------




def test_prune_deletes_only_our_old_backups(run, tmp_path):
    dest = tmp_path / "retention"
    dest.mkdir(mode=0o700)
    old = [labkit.fake_backup(dest, "moncabinet", "moncabinet", "2025010%dT000000Z" % d) for d in range(1, 6)]
    unverified_old = labkit.fake_backup(dest, "moncabinet", "moncabinet", "20241201T000000Z", verified=False)
    other_db = labkit.fake_backup(dest, "qadhya", "qadhya", "20200101T000000Z")
    same_prefix_other_db = labkit.fake_backup(dest, "moncabinet", "qadhya", "20200102T000000Z")
    (dest / "moncabinet-20200103T000000Z.dump").write_bytes(b"hand made, no manifest")
    (dest / "notes.txt").write_text("keep me")
    before = sorted(os.listdir(dest))

    args = dict(action="prune", database="moncabinet", dest_dir=str(dest), retention_days=30,
                retention_keep=2)
    planned = run(check=True, **args)
    assert planned["changed"] is True
    assert sorted(Path(p).name for p in planned["deleted"]) == sorted(old[:3] + [unverified_old])
    assert sorted(os.listdir(dest)) == before

    result = run(**args)
    assert result["changed"] is True
    assert sorted(Path(p).name for p in result["deleted"]) == sorted(old[:3] + [unverified_old])
    assert sorted(Path(p).name for p in result["kept"]) == sorted(old[3:])
    left = set(os.listdir(dest))
    for name in old[3:] + [other_db, same_prefix_other_db, "moncabinet-20200103T000000Z.dump"]:
        assert name in left
    assert "notes.txt" in left
    assert not any(n.startswith(tuple(old[:3])) for n in left)

    again = run(**args)
    assert again["changed"] is False and again["deleted"] == []


# --------------------------------------------------------------------------
# full disk
# --------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def make(size_mb):
        point = tmp_path / ("tmpfs%d" % len(mounts))
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0700" % size_mb, "tmpfs", str(point)],
                       check=True)
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="module")
def tiny_db(lab):
    lab.psql("postgres", "DROP DATABASE IF EXISTS dbops_tiny")
    lab.psql("postgres", "CREATE DATABASE dbops_tiny")
    lab.psql("dbops_tiny", "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 3)")
    yield "dbops_tiny"
    lab.psql("postgres", "DROP DATABASE IF EXISTS dbops_tiny WITH (FORCE)")


def earlier_backup(run, dest, tiny_db):
    result = run(database=tiny_db, dest_dir=str(dest), free_space_margin_mb=0, verify="checksum")
    assert not result.get("failed"), result.get("msg")
    return Path(result["path"]), result["sha256"]


def assert_only_earlier(dest, earlier, sha):
    assert sorted(os.listdir(dest)) == sorted([earlier.name, earlier.name + ".manifest.json"])
    assert sha256sum(earlier) == sha


def test_full_disk_preflight_refuses(run, tmpfs, tiny_db):
    dest = tmpfs(16)
    earlier, sha = earlier_backup(run, dest, tiny_db)
    result = run(database="moncabinet", dest_dir=str(dest), free_space_margin_mb=0)
    assert result.get("failed") is True and result["changed"] is False
    assert result["msg"].startswith("not enough free space in %s: " % dest)
    assert result["msg"].endswith("free space or choose another dest_dir")
    assert_only_earlier(dest, earlier, sha)


def test_disk_filling_up_during_the_dump_fails_cleanly(run, lab, tmpfs, tiny_db):
    size = int(lab.psql("postgres", "SELECT pg_database_size('moncabinet')")[0][0])
    dest = tmpfs(size // (1 << 20) + 24)
    earlier, sha = earlier_backup(run, dest, tiny_db)
    # Uncompressed SQL is larger than the (TOAST-compressed) database, so the
    # preflight passes and the write runs out of space; another process
    # filling the disk once the dump has started makes that certain.
    filler = dest / "zz-other-process.bin"
    stop = threading.Event()

    def fill_when_dump_starts():
        # Another process fills the disk once the backup has started writing.
        while not stop.is_set():
            if any(".partial-" in n for n in os.listdir(dest)):
                subprocess.run(["dd", "if=/dev/zero", "of=%s" % filler, "bs=1M"], capture_output=True,
                               check=False)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=fill_when_dump_starts)
    thread.start()
    try:
        result = run(database="moncabinet", dest_dir=str(dest), free_space_margin_mb=0, format="plain_gzip",
                     compression_level=0)
    finally:
        stop.set()
        thread.join()
    assert result.get("failed") is True, result
    assert result["msg"].startswith("disk full while writing the backup in %s" % dest), result["msg"]
    assert result["changed"] is False
    filler.unlink()
    assert_only_earlier(dest, earlier, sha)


# --------------------------------------------------------------------------
# what a backup counts, and which backup vouches for a database
# --------------------------------------------------------------------------

PARTS_DB = "dbops_it_parts"
PARTS_SQL = """
CREATE TABLE events (id int, at date, note text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2025-06-01' + g, 'note ' || g FROM generate_series(1, 300) g;
CREATE TABLE docs (id int, body text);
CREATE TABLE docs_archive (archived_at date) INHERITS (docs);
INSERT INTO docs SELECT g, 'doc ' || g FROM generate_series(1, 7) g;
INSERT INTO docs_archive SELECT g, 'old ' || g, date '2020-01-01' FROM generate_series(1, 3) g;
CREATE SCHEMA audit;
CREATE TABLE audit.log (id int);
"""


def fresh_db(lab, name, script):
    """Database `name` made anew on the lab's server, holding what `script` creates."""
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    lab.psql("postgres", "CREATE DATABASE %s" % name)
    labkit.docker("exec", lab.db, "psql", "-U", lab.info["db_user"], "-d", name, "-XAq",
                  "-v", "ON_ERROR_STOP=1", "-c", script)
    return name


@pytest.fixture
def parts_db(lab):
    """A database with a partitioned table, a legacy inheritance pair and a second schema."""
    yield fresh_db(lab, PARTS_DB, PARTS_SQL)
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % PARTS_DB)
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s_restored WITH (FORCE)" % PARTS_DB)


def test_every_row_counted_once_in_manifest_restore_and_db_info(lab, run, parts_db, tmp_path):
    expected = {"events": 300, "docs": 7, "docs_archive": 3, "audit.log": 0}
    result = run(database=parts_db, dest_dir=str(tmp_path / "b"), verify="restore", compression_level=1)
    assert result["changed"] is True and not result.get("failed"), result.get("msg")
    # Partitions are not listed (their parent holds their rows); the
    # inheritance parent counts only its own rows, as pg_dump dumps them.
    assert result["row_counts"] == expected
    manifest = json.loads(Path(result["manifest_path"]).read_text())
    assert manifest["partitioned_tables"] == ["events"]
    assert result["verified"]["ok"] is True and result["verified"]["details"]["checked"] == "restore"

    restored = run(action="restore", path=result["path"], restore_target=parts_db + "_restored")
    assert restored["changed"] is True and not restored.get("failed"), restored.get("msg")
    assert restored["row_counts_after"] == expected

    info, _out = labkit.run_module("db_info", lab.login_args(databases=[parts_db]))
    tables = info["databases"][parts_db]["tables"]
    assert {key: t["rows"] for key, t in tables.items()} == expected
    assert info["databases"][parts_db]["total_rows"] == sum(expected.values())


def test_backup_info_picks_the_backup_taken_for_the_live_name(lab, run, tmp_path):
    """As in a consolidation: the source dumped for the target name, then the empty target."""
    dest = str(tmp_path / "b")
    source = run(database="moncabinet", for_database="qadhya", purpose="pre_consolidation", dest_dir=dest,
                 compression_level=1)
    assert not source.get("failed"), source.get("msg")
    assert source["for_database"] == "qadhya" and source["purpose"] == "pre_consolidation"
    empty = run(database="qadhya", purpose="dropped_empty_target", dest_dir=dest, compression_level=1)
    assert not empty.get("failed"), empty.get("msg")
    manifest = json.loads(Path(empty["manifest_path"]).read_text())
    assert manifest["for_database"] == "qadhya" and manifest["purpose"] == "dropped_empty_target"
    before = sorted(os.listdir(dest))

    for check in (True, False):
        info = run(check=check, module="db_backup_info", dest_dir=dest, database="qadhya", checksum=True)
        assert info["changed"] is False and not info.get("failed"), info.get("msg")
        assert [b["path"] for b in info["backups"]] == [empty["path"], source["path"]]
        assert info["newest"]["path"] == source["path"]
        assert info["newest"]["total_rows"] == sum(source["row_counts"].values()) > 0
        assert info["newest"]["sha256_checked"] is True and info["newest"]["mode"] == "0600"
        assert info["backups"][0]["total_rows"] == 0 and info["backups"][0]["ok"] is True
    assert sorted(os.listdir(dest)) == before

    # The source's own name still finds it; another name finds nothing.
    by_source = run(module="db_backup_info", dest_dir=dest, database="moncabinet")
    assert by_source["newest"]["path"] == source["path"]
    none = run(module="db_backup_info", dest_dir=dest, database="elsewhere")
    assert none["backups"] == [] and none["newest"] == {}

    # A damaged newest backup is reported, and the choice falls back to nothing older.
    Path(source["path"]).write_bytes(b"PGDMP" + b"\0" * 10)
    damaged = run(module="db_backup_info", dest_dir=dest, database="qadhya")
    assert damaged["newest"] == {}
    assert damaged["backups"][1]["problems"][0].startswith("file has 15 bytes")


# --------------------------------------------------------------------------
# progress of a long backup
# --------------------------------------------------------------------------

BIG_DB = "progress_big"
# About 70 MB of rows that compress poorly: a dump of several seconds, not a minute.
BIG_SQL = """
CREATE TABLE big AS
  SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 17)::text) AS b,
         now() - g * interval '1 s' AS at
    FROM generate_series(1, 350000) g;
CREATE TABLE small (id int PRIMARY KEY, note text);
INSERT INTO small VALUES (1, 'one'), (2, 'two');
"""
PROGRESS = re.compile(r"backup of %s: (?P<step>[^,]+), (?P<mib>[\d.]+) MiB written in (?P<s>[\d.]+) s "
                      r"\((?P<rate>[\d.?]+) MiB/s\)" % BIG_DB)


@pytest.fixture
def big_db(lab):
    yield fresh_db(lab, BIG_DB, BIG_SQL)
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % BIG_DB)


def test_long_backup_shows_progress_and_a_final_rate(lab, big_db, tmp_path):
    """backup.yml on a generated database whose dump takes seconds: the backup role follows its
    async job and prints the step, the MiB written and the rate while it runs, then a final line
    with size, dump time and MiB/s; the manifest holds every table's content checksum."""
    inventory = labkit.write_inventory(tmp_path / "inventory.json", {lab.name: labkit.host_vars(
        lab.info, tmp_path, dbops_backup_database=big_db)})
    proc = labkit.run_playbook(REPO / "playbooks" / "backup.yml", inventory,
                               "-e", "backup_progress_interval=1", "-e", "backup_progress_min_bytes=0")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert lab.info["db_password"] not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "reports" / "backup" / (lab.name + "-latest.json")).read_text())
    backup = report["backup"]
    lines = [m.groupdict() for m in PROGRESS.finditer(" ".join(proc.stdout.split()))]
    # Followed while it ran: at least one line, and while it dumped, bytes and a rate.
    assert lines, proc.stdout[-4000:]
    assert all(line["step"] in ("starting", "dumping", "verifying (structure)") for line in lines), lines
    if backup["duration_s"] >= 3:
        assert any(float(line["mib"]) > 0 and line["rate"] != "?" for line in lines), (
            backup["duration_s"], lines)
    # The final line: size, dump time and MiB/s, as the report records them.
    mib = round(backup["bytes"] / 1048576, 1)
    final = "%s MiB dumped in %s s (%s MiB/s)" % (mib, backup["duration_s"], backup["throughput_mb_s"])
    assert final in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    assert backup["bytes"] > 20 * 1048576 and backup["throughput_mb_s"] > 0
    # The manifest says what the backup holds, table by table, and no status file is left; beside
    # them only the journal directory of the run lock backup.yml takes, the lock released.
    manifest = json.loads(Path(backup["manifest_path"]).read_text())
    assert manifest["row_counts"] == {"big": 350000, "small": 2}
    assert set(manifest["checksums"]) == {"big", "small"}
    assert manifest["checksums"]["big"].startswith("350000:")
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted(
        [backup["path"].rsplit("/", 1)[1], backup["manifest_path"].rsplit("/", 1)[1], "journal"])
    assert not (tmp_path / "backups" / "journal" / "run.lock").exists()
