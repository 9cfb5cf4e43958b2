"""bench/: the scripts parse and their pure parts compute what the docs say; no timing is tested."""

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs():
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--help"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    for word in ("consolidate", "hosts", "overhead", "scale", "render", "--quick"):
        assert word in proc.stdout


def test_arguments(bench):
    args = bench.parse_args(["--quick", "--prefix", "zz", "consolidate"])
    assert (args.repetitions, args.gigabytes, args.sections, args.prefix) == (2, 0.05, ["consolidate"], "zz")
    args = bench.parse_args([])
    assert args.repetitions == 5 and args.gigabytes == 1.0
    assert args.sections == [*bench.SECTIONS, "render"] and args.modes == list(bench.MODES)
    with pytest.raises(SystemExit):
        bench.parse_args(["nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--modes", "mounted,sideways"])


def test_last_outage_is_last_200_to_first_200(bench):
    samples = [(0.0, 503), (0.1, 503),             # the incident: no 200 yet, no outage
               (0.2, 200), (0.3, None), (0.5, 200),  # an earlier restart
               (1.0, 200), (1.02, None), (1.5, 503), (2.25, 200), (2.3, 200)]
    assert bench.last_outage(samples) == pytest.approx(1.25)
    assert bench.last_outage([(0, 503), (1, 200), (2, 200)]) is None
    assert bench.last_outage([(0, 200), (1, None)]) is None  # never came back: not an outage that ended


def test_profile_tasks_and_window(bench):
    output = "\n".join([
        "TASKS RECAP ****",
        "Pre-check | Validate ------------------------------------- 0.40s",
        "qadhya.dbops.restart_container : Stop | Stop the app container x -- 0.83s",
        "qadhya.dbops.rename_db : Rename | Rename the database to qadhya --- 0.73s",
        "qadhya.dbops.restart_container : Start | Start the app and wait for health 200 on x -- 2.06s",
        "Switch | Verify --------------------------------------- 0.30s",
    ])
    tasks = bench.profile_tasks(output)
    assert len(tasks) == 5 and tasks[0] == ("Pre-check | Validate", 0.40)
    window = bench.downtime_tasks(tasks)
    assert [entry[1] for entry in window] == [0.83, 0.73, 2.06]


def test_svg_plot_is_well_formed(bench):
    st = {"median": 1.0, "min": 0.5, "max": 2.0, "n": 3}
    table = {mode: {kind: {"total": st, "downtime": st, "load": st} for kind in bench.KINDS}
             for mode in ("mounted", "compose")}
    root = ET.fromstring(bench.svg_plot(table))
    assert root.tag.endswith("svg")
    assert len(root.findall(".//{http://www.w3.org/2000/svg}rect")) >= 2 * 2 * 3


def test_peer_playbook_parses():
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    for book in ("peer_consolidate.yml", "module_call.yml"):
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check",
                               "-i", "localhost,", str(BENCH / book)], capture_output=True, text=True,
                              env=env, cwd=REPO, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("held", ["timed_out", "answered_once_back"])
def test_the_poller_samples_an_outage_whose_requests_hang(bench, held):
    """While the app stops, a connection can be accepted and not answered: it times out, or is
    answered once the app is back. The poller must keep sending requests every 20 ms meanwhile,
    and count a held one as not answered when it was sent, or the outage goes unseen."""
    import http.server
    import threading
    import time

    down, back = threading.Event(), threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if down.is_set():
                if held == "timed_out":
                    time.sleep(1.0)  # longer than the poller waits
                    self.send_response(503)
                else:
                    back.wait(2)  # held by the proxy until the app answers again
                    self.send_response(200)
            else:
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with bench.HealthPoller("http://127.0.0.1:%d/" % server.server_port, timeout=0.6) as poller:
            time.sleep(0.3)
            back.clear()
            down.set()
            started = time.monotonic()
            time.sleep(0.4)
            down.clear()
            back.set()
            ended = time.monotonic()
            time.sleep(0.3)
    finally:
        server.shutdown()
    # The last 0.25 s left out: a request sent then is answered promptly once the app is back.
    inside = [code for t, code in poller.samples if started < t < ended - 0.25]
    # A poller waiting on one request at a time would send one, maybe two, in those 0.4 s.
    assert len(inside) >= 3 and set(inside) == {None}, inside
    assert 0.35 <= poller.last_outage() < 1.2, poller.samples
