"""check.yml's history and health dashboard, loaded in a real browser (headless Chromium).

One lab instance in the incident state: check.yml runs twice with rows added
in between (so the charts have two points), beside a host that fails before
it is checked, with a drill record as dr_drill.yml writes it. Chromium
loads the page from the file; the test reads the status elements from the
DOM it dumps and keeps a screenshot in tests/artifacts/.
"""

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import labkit
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
INSTANCE = labkit.instance_name("itdash")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Statuses(HTMLParser):
    """Every element carrying data-status, as (tag, its data-* attributes)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-status" in attrs:
            self.found.append((tag, {k: v for k, v in attrs.items() if k.startswith("data-") or k == "id"}))


def chromium(*args):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run .ci/bootstrap chromium (or apt-get install chromium)")
    # --no-sandbox: the tests run as root in a container, where the sandbox cannot start.
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--user-data-dir=%s" % (ARTIFACTS / ".chromium-profile"), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run(module_lab, tmp_path_factory):
    work = tmp_path_factory.mktemp("dash")
    lab = module_lab
    drills = work / "reports" / "drill"
    drills.mkdir(parents=True)
    started = datetime.now(UTC) - timedelta(hours=5)
    (drills / ("lab-dash-%s.json" % started.strftime("%Y%m%dT%H%M%SZ"))).write_text(json.dumps({
        "host": "lab-dash", "status": "ok", "reason": "", "recovery_seconds": 37.4, "data_age_seconds": 5400,
        "backup": "s3://bucket/qadhya/moncabinet-x.dump", "tables_checked": 5,
        "started_at": started.isoformat().replace("+00:00", "Z")}))
    hosts = {"lab-dash": labkit.host_vars(lab.info, work, dbops_environment="itdash"),
             # Fails validate_inputs (no dbops_env_file): a host that was never checked.
             "lab-gone": {k: v for k, v in labkit.host_vars(lab.info, work).items() if k != "dbops_env_file"}}
    inventory = labkit.write_inventory(work / "inventory.json", hosts)
    first = labkit.run_playbook(REPO / "playbooks" / "check.yml", inventory)
    lab.psql("qadhya", "CREATE TABLE dash_growth AS SELECT generate_series(1, 500) AS n")
    second = labkit.run_playbook(REPO / "playbooks" / "check.yml", inventory)
    return work, first, second


def test_history_keeps_one_record_per_host_and_run(run):
    work, first, second = run
    assert first.returncode != 0 and second.returncode != 0, second.stdout[-3000:]
    records = sorted((work / "reports" / "history").glob("lab-dash-*.json"))
    assert len(records) == 2, records
    rows = [json.loads(p.read_text())["database"]["total_rows"] for p in records]
    assert rows == [0, 500]
    assert not list((work / "reports" / "history").glob("lab-gone-*"))
    assert "dashboard %s" % (work / "reports" / "dashboard" / "itdash.html") in second.stdout


def test_the_page_loads_in_chromium_red_first_and_explained(run):
    work, _first, _second = run
    page = work / "reports" / "dashboard" / "itdash.html"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-itdash.png"
    chromium("--window-size=1280,1600", "--screenshot=%s" % shot, page.as_uri())
    assert shot.stat().st_size > 10000
    dom = chromium("--dump-dom", page.as_uri())
    parser = Statuses()
    parser.feed(dom)
    by_id = {attrs.get("id"): attrs for _tag, attrs in parser.found if attrs.get("id")}
    assert by_id["overall"]["data-status"] == "critical"
    hosts = [(a["data-host"], a["data-status"]) for tag, a in parser.found if tag == "section"]
    assert sorted(hosts) == [("lab-dash", "critical"), ("lab-gone", "critical")]
    problems = [(a["data-host"], a["data-check"], a["data-status"]) for tag, a in parser.found if tag == "li"]
    # Critical ones first, each named by host and check; the warning last.
    assert ("lab-dash", "backup", "critical") in problems and ("lab-gone", "check", "critical") in problems
    assert problems[-1] == ("lab-dash", "migrations", "warning")
    assert "no verified backup of qadhya" in dom and "no check record" in dom
    checks = {a["data-check"]: a["data-status"] for tag, a in parser.found if tag == "tr"}
    assert checks["backup"] == "critical" and checks["disk"] == "ok"
    # The charts are inline SVG and hold both runs; the drill and the migration are shown.
    assert "rows: 500 now (0 to 500 over 2 checks)" in dom
    assert "<svg" in dom and 'src="http' not in dom and 'href="http' not in dom
    assert "recovered in 37 s" in dom and "20260213_kb_validation_gamification.sql" in dom
    assert lab_password_absent(dom, run)


def lab_password_absent(dom, run):
    work = run[0]
    inventory = json.loads((work / "inventory.json").read_text())
    password = inventory["all"]["children"]["lab"]["hosts"]["lab-dash"].get("dbops_db_password", "")
    return not password or password not in dom


def test_check_mode_writes_no_history_and_no_page(tmp_path):
    record = {"host": "db1", "started_at": "2026-02-11T10:15:00.000000Z", "result": "ok", "checks": []}
    result, output = labkit.run_module("health_dashboard", {
        "report_dir": str(tmp_path), "environment": "prod", "hosts": ["db1"], "records": [record]},
        check=True)
    assert not result["failed"], output
    assert result["hosts"] == {"db1": "ok"} and not list(tmp_path.iterdir())
