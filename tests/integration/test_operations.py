"""docs/operations.md, run as written: every `bash` block, in order, against a lab instance.

The runbook's commands read INV, HOST and REPORTS from the environment
(its first block sets defaults only when they are unset): the test points
them at an inventory directory of its own for one lab instance, with a
local S3 server (moto) standing for the bucket. The lab is first brought to
the state after the incident's fix (the app on its data, in moncabinet), so
that the backup, restore and drill carry real rows.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import labkit
import pytest
from s3kit import s3  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "operations.md"
INSTANCE = labkit.instance_name("itops")  # module_lab
HOST = "ops-lab"
BLOCK_RE = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)


def blocks():
    return BLOCK_RE.findall(RUNBOOK.read_text(encoding="utf-8"))


def test_the_runbook_has_its_commands_in_the_order_a_person_needs_them():
    text = "\n".join(blocks())
    order = ["ansible-inventory", "dashboard", "check.yml", "-latest.json", "db_backup_info", "backup.yml",
             "backup_offsite", "restore.yml", "rollback.yml", "dr_drill.yml", "drill/"]
    positions = [text.index(word) for word in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))


@pytest.fixture(scope="module")
def ran(module_lab, s3, tmp_path_factory):  # noqa: F811
    lab = module_lab
    work = tmp_path_factory.mktemp("ops")
    lab.set_env("DB_NAME", "moncabinet")
    host = labkit.host_vars(lab.info, work, dbops_target_db="moncabinet", **s3.vars("ops"))
    inventory = work / "inventory" / "ops"
    inventory.mkdir(parents=True)
    # JSON is YAML: the inventory directory holds one hosts.yml, as inventory/prod does.
    (inventory / "hosts.yml").write_text(json.dumps({"all": {"children": {"lab": {"hosts": {HOST: host}}}}}))
    env = {**os.environ, "INV": str(inventory), "HOST": HOST, "REPORTS": str(work / "reports"),
           "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    results = []
    for block in blocks():
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        results.append((block, proc))
    return lab, work, results


def output(ran, word):
    """The output of the first block holding `word`, after asserting it exited 0."""
    for block, proc in ran[2]:
        if word in block:
            assert proc.returncode == 0, "%s\n--- exit %d:\n%s\n%s" % (
                block, proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])
            return proc.stdout + proc.stderr
    raise AssertionError("no runbook block holds %r" % word)


def test_every_block_exits_zero(ran):
    failed = [(block.splitlines()[0], proc.returncode, (proc.stdout + proc.stderr)[-1500:])
              for block, proc in ran[2] if proc.returncode != 0]
    assert not failed, failed


def test_health_dashboard_and_record(ran):
    _lab, work, _results = ran
    assert "inventory ok: %s" % HOST in output(ran, "ansible-inventory")
    # The first check runs before any backup: red, exit 2, said in words.
    check = output(ran, "playbooks/check.yml")
    assert "check.yml exit status 2" in check and "no verified backup of moncabinet" in check
    output(ran, '"$REPORTS"/dashboard/')
    # The page is named after the inventory directory (inventory/ops).
    assert (work / "reports" / "dashboard" / "ops.html").stat().st_size > 1000
    record = output(ran, "check/$HOST-latest.json")
    assert "%s critical checked at" % HOST in record and "backup" in record


def test_backups_local_and_in_the_bucket(ran, s3):  # noqa: F811
    backup = output(ran, "playbooks/backup.yml")
    assert "failed=0" in backup
    listing = output(ran, "qadhya.dbops.db_backup_info")
    # Listed before backup.yml runs, as in the runbook: none yet, said in words.
    assert "0 backup(s) of moncabinet in" in listing and "newest: {}" in listing
    copies = output(ran, "qadhya.dbops.backup_offsite")
    assert "s3://%s/ops/moncabinet-" % s3.bucket in copies
    assert s3.secret_key not in copies


def test_restore_rollback_and_drill(ran):
    lab = ran[0]
    restore = output(ran, "playbooks/restore.yml")
    assert "row counts equal the manifest" in restore
    restored = [r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE "
                                                   "'moncabinet_restored_%'")]
    assert len(restored) == 1
    for block, proc in ran[2]:
        if "rollback.yml" in block:
            assert proc.returncode == 0 and "failed=0" in proc.stdout, proc.stdout[-3000:]
    assert "drill ok" in output(ran, "playbooks/dr_drill.yml")
    measured = output(ran, "drill/$HOST-latest.json")
    pattern = r"drill ok at \S+: recovery \d+ s, data age \d+ s, \d+ tables checked"
    assert re.search(pattern, measured), measured
    # The drill's scratch container is gone; the live database still serves the app.
    assert lab.docker("ps", "-aq", "--filter", "label=qadhya.dbops.role=dr-drill").stdout.strip() == ""
    assert int(lab.psql("moncabinet", "SELECT count(*) FROM knowledge_base")[0][0]) == 580
