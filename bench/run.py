#!/usr/bin/env python3
"""Benchmark: qadhya.dbops side by side with the shell sequence and a peer playbook.

Sections (each writes .cache/bench/<section>.json; `render` turns whatever
exists into docs/benchmarks.md and docs/benchmarks.svg):

  consolidate  the consolidation three ways on freshly reset lab instances,
               alternating: the incident report's shell sequence, our
               playbooks/consolidate.yml, and the peer playbook
               bench/peer_consolidate.yml; app modes mounted (restart),
               created (recreate), compose, and an app ignoring SIGTERM
  hosts        consolidate.yml on 1 vs 3 lab instances in one run
  overhead     Ansible's own cost: start-up, per task, pipelining, facts,
               strategy, forks (synthetic playbooks on local hosts)
  scale        a generated database (default 1 GB on disk): every backup
               format and compression of qadhya.dbops.db_backup and each
               verification level against raw pg_dump | gzip / zstd, then
               exact counts and checksums vs count(*) by hand, check.yml
  render       write the Markdown and the SVG plot

Downtime is polled from outside every 20 ms: the last 200 before the outage
to the first 200 after it. A benchmark is never pass/fail: the exit status
only says whether it ran.

Usage: python bench/run.py [--quick] [-n 5] [--prefix h6] [SECTION ...]
"""

import argparse
import datetime
import http.client
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
LAB_PY = REPO / "lab" / "lab.py"
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
CHECK_PLAYBOOK = REPO / "playbooks" / "check.yml"
PEER_PLAYBOOK = BENCH / "peer_consolidate.yml"
MODULE_PLAYBOOK = BENCH / "module_call.yml"
RESULTS = REPO / ".cache" / "bench"
POLL_S = 0.02
SECTIONS = ("consolidate", "hosts", "overhead", "scale")
KINDS = ("shell", "peer", "playbook")
MODES = ("mounted", "created", "compose", "sigterm")
# The bench-only variant of the lab app: the same image, SIGTERM ignored, as
# Node is when it runs as PID 1 without an init; `docker stop` then waits its
# whole grace period and kills it.
SIGTERM_IMAGE = "qadhya-lab/app:1-ignores-sigterm"
SIGTERM_CMD = ("import runpy, signal; _set = signal.signal; "
               "signal.signal = lambda s, h: _set(s, signal.SIG_IGN if s == signal.SIGTERM else h); "
               "runpy.run_path('/app/app.py', run_name='__main__')")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def load_lab():
    """lab/lab.py as a module: the bench reuses its container arguments instead of copying them."""
    spec = importlib.util.spec_from_file_location("qadhya_lab", LAB_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lab(*args, tries=1):
    for attempt in range(tries):
        proc = subprocess.run([sys.executable, str(LAB_PY), *map(str, args)], capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return proc.stdout
        if attempt + 1 < tries:
            # lab.py waits 20 s for the app: an overloaded machine can take longer.
            log(f"lab.py {args[0]} failed, trying again: {proc.stderr.strip()[-200:]}")
    raise SystemExit(f"lab.py {' '.join(map(str, args))} failed: {proc.stderr.strip()}")


def lab_info(name):
    return json.loads(lab("env", "--instance", name))


def down_if_up(labmod, *names):
    for name in names:
        if (labmod.lab_root() / name / "instance.json").exists():
            lab("down", "--instance", name)


def load1():
    return round(os.getloadavg()[0], 2)


def ansible_bin(name):
    return str(Path(sys.executable).parent / name)


# --------------------------------------------------------------------------- measuring


def http_status(url, timeout=0.5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        # Refused, reset or cut mid-answer while the app stops: all "not up".
        return None


class HealthPoller:
    """Starts a request to a health URL every 20 ms, from outside the app.

    Each request runs in a thread of its own, so that one that hangs does not
    hold the next ones back: while the app stops, Docker's port proxy can
    accept a connection and keep it open, and a poller waiting on one request
    at a time would sample the outage only as often as its requests time out.
    An answer counts at the time it came, and a request that waited longer
    than SLOW_S (or 10 times the median wait) for it also counts as not
    answered at the time it was sent: a held connection answered once the app
    is back is a user who waited, not an app that was up.
    """

    SLOW_S = 0.25

    def __init__(self, url, timeout=2.0):
        self.url = url
        self.timeout = timeout
        self.answers = []  # (sent, answered, status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probes = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _probe(self, sent):
        status = http_status(self.url, timeout=self.timeout)
        with self._lock:
            self.answers.append((sent, time.monotonic(), status))

    def _run(self):
        while not self._stop.is_set():
            sent = time.monotonic()
            probe = threading.Thread(target=self._probe, args=(sent,), daemon=True)
            probe.start()
            self._probes = [p for p in self._probes if p.is_alive()] + [probe]
            self._stop.wait(max(0.0, POLL_S - (time.monotonic() - sent)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for probe in self._probes:
            probe.join()
        self.answers.sort()

    @property
    def samples(self):
        """(time, status) for last_outage: a prompt answer when it came; a slow one as not answered
        (None) when it was sent, and, if it was a 200 in the end, as that 200 when it came (a slow
        failure's own time is only its timeout running out, whenever the app came back)."""
        waits = [answered - sent for sent, answered, _ in self.answers]
        slow = max(self.SLOW_S, 10 * statistics.median(waits)) if waits else self.SLOW_S
        points = []
        for sent, answered, status in self.answers:
            if answered - sent <= slow:
                points.append((answered, status))
                continue
            points.append((sent, None))
            if status == 200:
                points.append((answered, status))
        return sorted(points, key=lambda point: point[0])

    def last_outage(self):
        return last_outage(self.samples)

    def _gaps(self):
        times = [sent for sent, _, _ in self.answers]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def max_gap(self):
        """Longest time between two requests sent (ms): on a loaded machine the 20 ms are not kept."""
        return round(1000 * max(self._gaps(), default=0))

    def median_gap(self):
        gaps = self._gaps()
        return round(1000 * statistics.median(gaps)) if gaps else None

    def summary(self):
        return {"downtime_s": self.last_outage(), "poll_gap_ms": self.max_gap(),
                "poll_median_ms": self.median_gap()}


def last_outage(samples):
    """Seconds from the last 200 before the last outage to the first 200 after it (None: no outage).

    An outage is a run of non-200 samples between two 200s; a run before the
    first 200 (the incident's 503) is not one.
    """
    outage, last_ok, in_outage = None, None, False
    for t, code in samples:
        if code == 200:
            if in_outage:
                outage = t - last_ok
                in_outage = False
            last_ok = t
        elif last_ok is not None:
            in_outage = True
    return outage


def profile_tasks(output):
    """[(task name, seconds)] in execution order, from the profile_tasks recap."""
    recap = output.split("TASKS RECAP", 1)[-1]
    tasks = []
    for line in recap.splitlines():
        match = re.match(r"^(.*?) -+ ?(\d+\.\d\d)s$", line.strip())
        if match:
            tasks.append((match.group(1), float(match.group(2))))
    return tasks


def downtime_tasks(tasks):
    """The tasks from the last app stop to the start that ends the window (one task: app_switch's)."""
    one_call = [(name, sec) for name, sec in tasks if re.search(r"Switch \| Stop the app, rename", name)]
    if one_call:
        return one_call[-1:]
    starts = [i for i, (name, _) in enumerate(tasks) if re.search(r"Start \| Start the app", name)]
    if not starts:
        return []
    end = starts[-1]
    stops = [i for i, (name, _) in enumerate(tasks[:end]) if re.search(r"Stop \| Stop the app", name)]
    return tasks[stops[-1]:end + 1] if stops else []


def run_ansible(playbook, inventory, *args, env=None, timeout=3600, profile=True):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", **(env or {})}
    if profile:
        env.update(ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                   PROFILE_TASKS_TASK_OUTPUT_LIMIT="all", PROFILE_TASKS_SORT_ORDER="none")
    cmd = [ansible_bin("ansible-playbook"), str(playbook), "-i", str(inventory), *map(str, args)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False,
                          timeout=timeout)
    return proc, time.monotonic() - started


def failure_reason(output):
    """The message of the first failed task of an ansible-playbook output, one line."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("fatal:") or "FAILED!" in line:
            for follow in [line, *lines[i + 1:i + 30]]:
                match = re.search(r"""["']?msg["']?\s*[:=]\s*(.+)""", follow)
                if match:
                    return match.group(1).strip().strip('",')[:300]
            return line[:300]
    return "failed (no message)"


def write_inventory(path, hosts):
    path.write_text(json.dumps({"all": {"hosts": hosts}}))
    os.chmod(path, 0o600)  # it holds the lab's database password
    return path


def local_host(**extra):
    return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **extra}


def dbops_vars(info, workdir):
    return local_host(
        dbops_env_file=info["env_file"], dbops_db_container=info["db_container"],
        dbops_app_container=info["app_container"], dbops_target_db="qadhya",
        dbops_health_url=info["health_url"], dbops_backup_dir=info["backup_dir"],
        dbops_migrations_dir=str(REPO / "migrations"), dbops_report_dir=str(workdir / "reports"))


def sh(command):
    """Run one shell step as typed by hand (bash, pipefail); returns its duration."""
    started = time.monotonic()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"shell step failed: {command}\n{proc.stderr.strip()}")
    return time.monotonic() - started


def wait_200(url, timeout=180):
    deadline = time.monotonic() + timeout
    while http_status(url) != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered 200")
        time.sleep(POLL_S)


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------- lab modes


class Lab:
    """One lab instance the bench resets and drives, in one of the bench's modes."""

    def __init__(self, labmod, name, port=None):
        self.labmod, self.name, self.port = labmod, name, port

    def up(self):
        lab("up", "--instance", self.name, *(["--port", self.port] if self.port else []), tries=3)
        self.info = lab_info(self.name)

    def reset(self, mode):
        lab("reset", "--instance", self.name, "--mode", "mounted" if mode == "sigterm" else mode, tries=3)
        self.info = lab_info(self.name)
        if mode == "sigterm":
            self.swap_app(SIGTERM_IMAGE)

    def swap_app(self, image):
        """The lab's own app container (same arguments, lab.start_app), from another image."""
        lm = self.labmod
        inst = lm.load_instance(self.name)
        lm.remove_container(self.info["app_container"])
        saved, lm.APP_IMAGE = lm.APP_IMAGE, image
        try:
            lm.start_app(inst)
        finally:
            lm.APP_IMAGE = saved
        lm.wait_http(self.info["health_url"], timeout=180)

    def run_args(self):
        """`docker run` of the app as lab.py creates it (mode created), for the shell's recreate."""
        lm = self.labmod
        inst = lm.load_instance(self.name)
        info = self.info
        return ["docker", "run", "-d", "--init", "--name", info["app_container"],
                "--network", info["network"], "--network-alias", "app", "--restart", "unless-stopped",
                "--label", f"{lm.LABEL}={self.name}",
                "-p", f"127.0.0.1:{inst.port}:3000", *lm.app_config_args(inst), lm.APP_IMAGE]

    def compose_cmd(self):
        info = self.info
        return (f"docker compose -p {info['compose_project']} -f {info['compose_file']}"
                f" --project-directory {Path(info['compose_file']).parent}")

    def stop_cmd(self, mode):
        if mode == "compose":
            return f"{self.compose_cmd()} stop nextjs"
        return f"docker stop {self.info['app_container']}"

    def start_cmd(self, mode):
        if mode == "compose":
            # As lab.py and our module: no --no-deps (docker/compose#12069).
            return f"{self.compose_cmd()} up -d --force-recreate nextjs"
        if mode == "created":
            return f"docker rm {self.info['app_container']} && {shlex.join(self.run_args())}"
        return f"docker start {self.info['app_container']}"

    def repoint_untimed(self, mode):
        """The report's step 3, outside every timed window: env at moncabinet, app on its data."""
        env_file = self.info["env_file"]
        sh(f"sed -i 's/^DB_NAME=qadhya\\b/DB_NAME=moncabinet/' {env_file}")
        if mode in ("mounted", "sigterm"):
            sh(f"docker restart -t 1 {self.info['app_container']}")
        else:
            sh(f"{self.stop_cmd(mode)} -t 1 && {self.start_cmd(mode)}" if mode == "created"
               else self.start_cmd(mode))
        wait_200(self.info["health_url"])

    def end_state_ok(self):
        status = json.loads(lab("status", "--instance", self.name, "--json"))
        return (status["env_db_name"] == "qadhya" and status["health_http"] == 200
                and status["databases"].get("qadhya", {}).get("knowledge_base") == 580
                and "moncabinet" not in status["databases"]), status


def build_sigterm_image(labmod):
    dockerfile = f"FROM {labmod.APP_IMAGE}\nCMD {json.dumps(['python3', '-c', SIGTERM_CMD])}\n"
    proc = subprocess.run(["docker", "build", "-q", "-t", SIGTERM_IMAGE, "-"], input=dockerfile, text=True,
                          capture_output=True, check=False, env={k: v for k, v in os.environ.items()
                                                                 if k != "DOCKER_BUILDKIT"})
    if proc.returncode != 0:
        raise SystemExit(f"building {SIGTERM_IMAGE} failed: {proc.stderr.strip()}")


# --------------------------------------------------------------------------- consolidation


def run_shell(lb, mode, workdir):
    info = lb.info
    db, user, env_file, url = info["db_container"], info["db_user"], info["env_file"], info["health_url"]
    dump = workdir / "moncabinet.sql.gz"
    lb.repoint_untimed(mode)
    steps = {}
    with HealthPoller(url) as poller:
        started = time.monotonic()
        steps["pg_dump | gzip"] = sh(f"docker exec {db} pg_dump -U {user} moncabinet | gzip > {dump}")
        steps["docker stop"] = sh(lb.stop_cmd(mode))
        # Two -c: DROP DATABASE cannot run inside the implicit transaction of one multi-statement -c.
        steps["drop + rename"] = sh(
            f"docker exec {db} psql -U {user} -d postgres -v ON_ERROR_STOP=1"
            " -c 'DROP DATABASE qadhya' -c 'ALTER DATABASE moncabinet RENAME TO qadhya'")
        steps["env backup + sed"] = sh(f"cp -p {env_file} {env_file}.bak"
                                       f" && sed -i 's/^DB_NAME=moncabinet\\b/DB_NAME=qadhya/' {env_file}")
        steps["docker start" if mode != "created" else "docker rm + run"] = sh(lb.start_cmd(mode))
        health_started = time.monotonic()
        wait_200(url)
        ended = time.monotonic()
        steps["poll health until 200"] = ended - health_started
        time.sleep(0.1)  # the poller sees the 200 the loop saw
    return {"total_s": ended - started, **poller.summary(),
            "steps": steps}


def peer_vars(lb, mode, workdir):
    info = lb.info
    extra = {"peer_mode": {"mounted": "restart", "sigterm": "restart"}.get(mode, "recreate"
                                                                            if mode == "created" else mode)}
    if mode == "created":
        extra.update(peer_app_image=lb.labmod.APP_IMAGE, peer_app_port=info["port"],
                     peer_network=info["network"], peer_app_labels={lb.labmod.LABEL: lb.name})
    if mode == "compose":
        extra.update(peer_compose_dir=str(Path(info["compose_file"]).parent), peer_compose_service="nextjs")
    return local_host(
        peer_db_container=info["db_container"], peer_app_container=info["app_container"],
        peer_env_file=info["env_file"], peer_health_url=info["health_url"], peer_db_user=info["db_user"],
        peer_db_password=info["db_password"], peer_backup_dir=str(workdir), peer_source="moncabinet",
        peer_target="qadhya", **extra)


def run_peer(lb, mode, workdir):
    lb.repoint_untimed(mode)
    inventory = write_inventory(workdir / "inventory.json", {"bench": peer_vars(lb, mode, workdir)})
    with HealthPoller(lb.info["health_url"]) as poller:
        proc, total = run_ansible(PEER_PLAYBOOK, inventory)
        time.sleep(0.1)
    if proc.returncode != 0:
        return {"failed": failure_reason(proc.stdout), "total_s": total}
    return {"total_s": total, **poller.summary(),
            "tasks": profile_tasks(proc.stdout)}


def playbook_start(lb, mode):
    """Where the playbook's clock starts (--playbook-from): by default where the shell's and the
    peer's do, the app already on its data; with `incident`, at the incident, its repoint timed too."""
    if PLAYBOOK_FROM == "repointed":
        lb.repoint_untimed(mode)


def run_playbook(lb, mode, workdir):
    playbook_start(lb, mode)
    inventory = write_inventory(workdir / "inventory.json", {"bench": dbops_vars(lb.info, workdir)})
    with HealthPoller(lb.info["health_url"]) as poller:
        proc, total = run_ansible(PLAYBOOK, inventory)
        time.sleep(0.1)
    if proc.returncode != 0:
        # Recorded, not fatal: on an overloaded machine a lock or health timeout can end a run.
        return {"failed": failure_reason(proc.stdout), "total_s": total}
    reports = sorted((workdir / "reports").glob("bench-*.json"))
    report = json.loads(reports[-1].read_text()) if reports else {}
    return {"total_s": total, **poller.summary(), "playbook_from": PLAYBOOK_FROM,
            "self_reported_downtime_s": report.get("downtime_s"), "result": report.get("result"),
            "tasks": profile_tasks(proc.stdout)}


def run_baseline(lb, mode, workdir):
    """consolidate.yml of another checkout (--baseline): an earlier version, measured in the same run."""
    playbook_start(lb, mode)
    inventory = write_inventory(workdir / "inventory.json", {"bench": dbops_vars(lb.info, workdir)})
    with HealthPoller(lb.info["health_url"]) as poller:
        proc, total = run_ansible(BASELINE / "playbooks" / "consolidate.yml", inventory,
                                  env={"ANSIBLE_CONFIG": str(BASELINE / "ansible.cfg")})
        time.sleep(0.1)
    if proc.returncode != 0:
        return {"failed": failure_reason(proc.stdout), "total_s": total}
    reports = sorted((workdir / "reports").glob("bench-*.json"))
    report = json.loads(reports[-1].read_text()) if reports else {}
    return {"total_s": total, **poller.summary(), "self_reported_downtime_s": report.get("downtime_s"),
            "playbook_from": PLAYBOOK_FROM, "result": report.get("result"),
            "tasks": profile_tasks(proc.stdout)}


RUNNERS = {"shell": run_shell, "peer": run_peer, "playbook": run_playbook, "baseline": run_baseline}
# --baseline: the checkout whose consolidate.yml runs as the kind "baseline" (not rendered).
BASELINE = None
# --playbook-from: the state the playbook (and the baseline) start from.
PLAYBOOK_FROM = "repointed"


def past_deadline(args):
    """--until HH:MM (UTC): no new repetition starts after it; what was measured is kept."""
    if not args.until:
        return False
    now = datetime.datetime.now(datetime.UTC).strftime("%H:%M")
    return now >= args.until


def section_consolidate(args, labmod, tmp):
    lb = Lab(labmod, f"{args.prefix}bench1")
    lb.up()
    if "sigterm" in args.modes:
        build_sigterm_image(labmod)
    runs, first = [], 0
    previous = RESULTS / "consolidate.json"
    if args.append and previous.exists():
        # More repetitions after those of an earlier run (same machine, another hour).
        old_runs = json.loads(previous.read_text())["runs"]
        first = 1 + max((r["rep"] for r in old_runs), default=-1)
    # Repetitions outside, modes inside: stopped early (--until), every mode has as many runs.
    for i in range(first, first + args.repetitions):
        if i > first and past_deadline(args):
            log(f"--until {args.until} passed: stopping after {i} repetition(s)")
            break
        for mode in args.modes:
            # Alternating: each kind goes first, second and third in turn.
            kinds = KINDS + (("baseline",) if BASELINE else ())
            order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
            for kind in order:
                lb.reset(mode)
                workdir = Path(tempfile.mkdtemp(prefix=f"{mode}-{kind}-{i}-", dir=tmp))
                load = load1()
                started = time.monotonic()
                try:
                    result = RUNNERS[kind](lb, mode, workdir)
                except SystemExit as exc:
                    # A shell step or a health wait that gave up: recorded like a failed playbook.
                    result = {"failed": str(exc).splitlines()[0][:300], "total_s": time.monotonic() - started}
                if "failed" not in result:
                    ok, status = lb.end_state_ok()
                    if not ok:
                        raise SystemExit(f"{kind} ({mode}): unexpected end state: {json.dumps(status)}")
                runs.append({"mode": mode, "kind": kind, "rep": i, "load1": load, **result})
                # Kept after every run: a long benchmark stopped halfway still has its data.
                (RESULTS / "consolidate.partial.json").write_text(json.dumps(runs))
                if "failed" in result:
                    log(f"{mode:8s} {i + 1} {kind:8s} FAILED after {result['total_s']:.0f} s: "
                        f"{result['failed']}")
                    continue
                log(f"{mode:8s} {i + 1}/{args.repetitions} {kind:8s} total {result['total_s']:6.2f} s, "
                    f"downtime {fmt(result['downtime_s'])} s (load {load}, "
                    f"poll gap {result['poll_gap_ms']} ms)")
    if not args.keep:
        down_if_up(labmod, lb.name)
    (RESULTS / "consolidate.partial.json").unlink(missing_ok=True)
    # A mode measured again replaces its rows (--append: adds to them); other modes' rows stay.
    if previous.exists():
        old = json.loads(previous.read_text())
        runs = [r for r in old["runs"] if args.append or r["mode"] not in args.modes] + runs
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    return {"repetitions": {m: 1 + max(r["rep"] for r in runs if r["mode"] == m) for m in modes},
            "modes": modes, "runs": runs}


def section_hosts(args, labmod, tmp):
    labs = [Lab(labmod, f"{args.prefix}hosts{i}") for i in (1, 2, 3)]
    for lb in labs:
        lb.up()
    runs = []
    for i in range(max(1, args.repetitions // 2)):
        for count in ((1, 3) if i % 2 == 0 else (3, 1)):
            chosen = labs[:count]
            for lb in chosen:
                lb.reset("mounted")
            workdir = Path(tempfile.mkdtemp(prefix=f"hosts{count}-{i}-", dir=tmp))
            hosts = {f"bench{j}": dbops_vars(lb.info, workdir / f"h{j}") for j, lb in enumerate(chosen, 1)}
            inventory = write_inventory(workdir / "inventory.json", hosts)
            load = load1()
            pollers = [HealthPoller(lb.info["health_url"]) for lb in chosen]
            for p in pollers:
                p.__enter__()
            try:
                proc, total = run_ansible(PLAYBOOK, inventory)
                time.sleep(0.1)
            finally:
                for p in pollers:
                    p.__exit__(None, None, None)
            if proc.returncode != 0:
                runs.append({"hosts": count, "rep": i, "total_s": total, "load1": load,
                             "failed": failure_reason(proc.stdout)})
                log(f"hosts {count}: FAILED after {total:.0f} s: {runs[-1]['failed']}")
                (RESULTS / "hosts.partial.json").write_text(json.dumps({"runs": runs}))
                continue
            downtimes = [p.last_outage() for p in pollers]
            runs.append({"hosts": count, "rep": i, "total_s": total, "downtime_s": downtimes, "load1": load})
            (RESULTS / "hosts.partial.json").write_text(json.dumps({"runs": runs}))
            log(f"hosts {count}: total {total:.2f} s, downtime {', '.join(fmt(d) for d in downtimes)} s")
        if past_deadline(args):
            break
    if not args.keep:
        down_if_up(labmod, *(lb.name for lb in labs))
    return {"runs": runs}


# --------------------------------------------------------------------------- overhead


def synthetic_playbook(path, ntasks, task, gather=False, strategy="linear"):
    bodies = {
        "debug": {"ansible.builtin.debug": {"msg": "x"}},
        "command": {"ansible.builtin.command": "/bin/true", "changed_when": False},
    }
    play = {"name": "Overhead", "hosts": "all", "gather_facts": gather, "strategy": strategy,
            "tasks": [{"name": f"Task {i}", **bodies[task]} for i in range(ntasks)]}
    path.write_text(json.dumps([play]))
    return path


OVERHEAD_CASES = (
    # (label, tasks, task kind, hosts, env, gather, strategy)
    ("start-up: 1 debug task, 1 host", 1, "debug", 1, {}, False, "linear"),
    ("20 debug tasks (no module run), 1 host", 20, "debug", 1, {}, False, "linear"),
    ("20 command tasks, 1 host, pipelining on", 20, "command", 1, {"ANSIBLE_PIPELINING": "1"}, False,
     "linear"),
    ("20 command tasks, 1 host, pipelining off", 20, "command", 1, {"ANSIBLE_PIPELINING": "0"}, False,
     "linear"),
    ("1 debug task, 1 host, gather_facts: true", 1, "debug", 1, {}, True, "linear"),
    ("20 command tasks, 3 hosts, forks 1", 20, "command", 3, {"ANSIBLE_FORKS": "1"}, False, "linear"),
    ("20 command tasks, 3 hosts, forks 10", 20, "command", 3, {"ANSIBLE_FORKS": "10"}, False, "linear"),
    ("20 command tasks, 3 hosts, forks 10, strategy free", 20, "command", 3, {"ANSIBLE_FORKS": "10"}, False,
     "free"),
)


def section_overhead(args, labmod, tmp):
    del labmod
    work = Path(tempfile.mkdtemp(prefix="overhead-", dir=tmp))
    inventories = {n: write_inventory(work / f"inv{n}.json", {f"h{i}": local_host() for i in range(n)})
                   for n in (1, 3)}
    results = {label: [] for label, *_ in OVERHEAD_CASES}
    loads = []
    for rep in range(max(1, args.repetitions // 2)):
        for idx, (label, ntasks, task, nhosts, env, gather, strategy) in enumerate(OVERHEAD_CASES):
            book = synthetic_playbook(work / f"p{idx}.json", ntasks, task, gather, strategy)
            loads.append(load1())
            proc, total = run_ansible(book, inventories[nhosts], env=env, profile=False)
            if proc.returncode != 0:
                raise SystemExit(f"overhead case {label!r} failed:\n{proc.stdout[-2000:]}")
            results[label].append(total)
        log(f"overhead repetition {rep + 1} done")
    return {"cases": {k: stats(v) for k, v in results.items()}, "raw": results,
            "load1": stats(loads)}


# --------------------------------------------------------------------------- scale


def psql(container, database, sql, user="moncabinet"):
    proc = subprocess.run(["docker", "exec", "-i", container, "psql", "-U", user, "-d", database, "-XAtq",
                           "-v", "ON_ERROR_STOP=1"], input=sql, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"psql failed: {proc.stderr.strip()[:500]}")
    return proc.stdout.strip()


def large_table_sql(name, rows):
    # ~190 bytes a row on disk, about half as compressible as text usually is.
    return f"""
SET synchronous_commit = off;
CREATE TABLE {name} AS
SELECT g::bigint AS id, (g % 50000)::int AS account, (ARRAY['deposit','fee','transfer','refund'])[1 + g % 4]
       AS kind, md5(g::text) || ' ' || md5((g * 7)::text) || ' note ' || (g % 997)::text AS payload,
       round((g % 100000) / 7.0, 2)::numeric(12,2) AS amount,
       timestamptz '2024-01-01' + g * interval '1 second' AS created_at
FROM generate_series(1, {rows}) AS g;
ALTER TABLE {name} ADD PRIMARY KEY (id);
"""


SMALL_TABLES_SQL = """
SET synchronous_commit = off;
DO $$ BEGIN
  FOR i IN 1..{count} LOOP
    EXECUTE format('CREATE TABLE bench_small_%s AS SELECT g AS id, md5(g::text) AS v,'
                   ' now() - g * interval ''1 minute'' AS at FROM generate_series(1, %s) AS g',
                   i, 500 + i * 20);
  END LOOP;
END $$;
"""


def db_size(container, database):
    return int(psql(container, "postgres", f"SELECT pg_database_size('{database}')"))


def generate_database(info, gigabytes):
    """Many small tables, three large ones, in moncabinet; parallel CREATE TABLE AS, once."""
    db = info["db_container"]
    started = time.monotonic()
    rows = int(gigabytes * 1.18e9 / 3 / 190)
    procs = [subprocess.Popen(["docker", "exec", "-i", db, "psql", "-U", info["db_user"], "-d", "moncabinet",
                               "-XAtq", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(3)]
    for i, proc in enumerate(procs):
        proc.stdin.write(large_table_sql(f"bench_large_{i + 1}", rows))
        proc.stdin.close()
    psql(db, "moncabinet", SMALL_TABLES_SQL.format(count=200))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"generating the database failed: {proc.stderr.read()[:500]}")
    psql(db, "moncabinet", "VACUUM ANALYZE; CHECKPOINT;")
    return time.monotonic() - started


def module_call(info, workdir, **bench):
    out = workdir / f"result-{time.monotonic_ns()}.json"
    defaults = {"bench_format": "custom", "bench_level": 6, "bench_verify": "structure",
                "bench_count": "exact", "bench_checksum_tables": []}
    host = local_host(bench_db_container=info["db_container"], bench_db_user=info["db_user"],
                      bench_db_password=info["db_password"], bench_database="moncabinet",
                      bench_dest_dir=str(workdir / "backups"), bench_name_prefix="bench",
                      bench_out=str(out), **{**defaults, **bench})
    inventory = write_inventory(workdir / "module-inventory.json", {"bench": host})
    proc, total = run_ansible(MODULE_PLAYBOOK, inventory)
    if proc.returncode != 0:
        raise SystemExit(f"module call {bench} failed:\n{proc.stdout[-3000:]}")
    tasks = profile_tasks(proc.stdout)
    wanted = "Bench | Back up" if bench.get("bench_call") == "backup" else "Bench | Inspect"
    task_s = next((s for name, s in tasks if name.startswith(wanted)), None)
    result = json.loads(out.read_text())
    out.unlink()
    return {"wall_s": total, "task_s": task_s, "result": result}


BACKUP_CASES = (
    # (format, level, verify), in order of interest: a run cut short (--until) has the first ones.
    ("custom", 6, "structure"),  # the module's default
    ("plain_zstd", 3, "structure"),
    ("custom", 6, "none"),
    ("custom", 6, "checksum"),
    ("plain_gzip", 6, "structure"),
    ("custom", 6, "restore"),
    ("custom", 1, "structure"),
    ("custom", 0, "structure"),
    ("plain_gzip", 1, "structure"),
    ("plain_zstd", 6, "structure"),
    ("plain_zstd", 1, "none"),
)


def raw_cases(info, out):
    db, user = info["db_container"], info["db_user"]
    dump = f"docker exec {db} pg_dump -U {user} moncabinet"
    inside = "/var/lib/postgresql/bench-dir"
    return (
        ("pg_dump | gzip (-6)", f"{dump} | gzip > {out}.sql.gz", f"{out}.sql.gz"),
        ("pg_dump | zstd (-3)", f"{dump} | zstd -q -3 > {out}.sql.zst", f"{out}.sql.zst"),
        ("pg_dump -Fd -j 2 (in the container)", f"docker exec {db} sh -c 'rm -rf {inside} &&"
         f" pg_dump -U {user} -Fd -j 2 -f {inside} moncabinet'", ("container", inside)),
        ("pg_dump -Fc (-Z6) > file", f"{dump} -Fc > {out}.dump", f"{out}.dump"),
        ("pg_dump | gzip -1", f"{dump} | gzip -1 > {out}-1.sql.gz", f"{out}-1.sql.gz"),
        ("pg_dump -Fd -j 1 (in the container)", f"docker exec {db} sh -c 'rm -rf {inside} &&"
         f" pg_dump -U {user} -Fd -j 1 -f {inside} moncabinet'", ("container", inside)),
        ("pg_dump | zstd -T0 (-3, all cores)", f"{dump} | zstd -q -T0 -3 > {out}-t.sql.zst",
         f"{out}-t.sql.zst"),
    )


def output_bytes(info, target):
    if isinstance(target, tuple):
        out = subprocess.run(["docker", "exec", info["db_container"], "du", "-sb", target[1]],
                             capture_output=True, text=True, check=False).stdout.split()
        subprocess.run(["docker", "exec", info["db_container"], "rm", "-rf", target[1]], check=False)
        return int(out[0]) if out else None
    size = Path(target).stat().st_size
    Path(target).unlink()
    return size


def generated_before(labmod, name, gigabytes):
    """Seconds the generation took, when an instance kept by --keep already holds that database."""
    if not (labmod.lab_root() / name / "instance.json").exists():
        return None
    info = lab_info(name)
    proc = subprocess.run(["docker", "exec", info["db_container"], "psql", "-U", info["db_user"],
                           "-d", "postgres", "-XAtc",
                           "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                           " WHERE datname = 'moncabinet'"], capture_output=True, text=True, check=False)
    words = proc.stdout.split()
    if proc.returncode == 0 and len(words) == 3 and words[0] == "bench" and float(words[1]) == gigabytes:
        log(f"reusing the database generated before in instance {name}")
        return float(words[2])
    return None


def section_scale(args, labmod, tmp):
    lb_name = f"{args.prefix}big"
    reuse = generated_before(labmod, lb_name, args.gigabytes)
    if not reuse:
        lab("up", "--instance", lb_name, tries=3)
    info = lab_info(lb_name)
    db = info["db_container"]
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=tmp))
    (work / "backups").mkdir(mode=0o700)
    load = load1()
    gen_s = reuse or generate_database(info, args.gigabytes)
    psql(db, "postgres", f"COMMENT ON DATABASE moncabinet IS 'bench {args.gigabytes} {gen_s:.1f}'")
    size = db_size(db, "moncabinet")
    tables = int(psql(db, "moncabinet", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    log(f"generated {size / 1e9:.2f} GB in {tables} tables in {gen_s:.0f} s (load {load})")
    result = {"db_bytes": size, "tables": tables, "generate_s": gen_s, "gigabytes": args.gigabytes,
              "backups": [], "raw": [], "checks": {}}
    # The app on its data (the report's step 3), so check.yml judges a healthy setup.
    sh(f"sed -i 's/^DB_NAME=qadhya\\b/DB_NAME=moncabinet/' {info['env_file']}"
       f" && docker restart -t 1 {info['app_container']}")
    cases = BACKUP_CASES[:args.cases or (6 if args.quick else None)]
    raws = raw_cases(info, work / "raw")[:args.cases or (4 if args.quick else None)]
    # Interleaved, so a change of the machine's load spreads over both kinds.
    for i in range(max(len(cases), len(raws))):
        if i and past_deadline(args):
            log(f"--until {args.until} passed: no more backup cases")
            break
        if i < len(raws):
            label, command, target = raws[i]
            load = load1()
            seconds = sh(command)
            entry = {"label": label, "seconds": seconds, "bytes": output_bytes(info, target), "load1": load}
            result["raw"].append(entry)
            log(f"raw {label}: {seconds:.2f} s, {(entry['bytes'] or 0) / 1e6:.0f} MB (load {load})")
        if i < len(cases):
            fmt_, level, verify = cases[i]
            load = load1()
            call = module_call(info, work, bench_call="backup", bench_format=fmt_, bench_level=level,
                               bench_verify=verify)
            res = call["result"]
            entry = {"format": fmt_, "level": level, "verify": verify, "task_s": call["task_s"],
                     "wall_s": call["wall_s"], "dump_s": res.get("duration_s"), "bytes": res.get("bytes"),
                     "verified": res.get("verified"), "load1": load}
            result["backups"].append(entry)
            log(f"db_backup {fmt_} -{level} verify={verify}: task {call['task_s']} s, "
                f"{(res.get('bytes') or 0) / 1e6:.0f} MB (load {load})")
            keep = (fmt_, level, verify) == BACKUP_CASES[0]
            for path in (res.get("path"), res.get("manifest_path")):
                if path and not keep:
                    Path(path).unlink(missing_ok=True)
        (RESULTS / "scale.partial.json").write_text(json.dumps(result))
    result["checks"] = scale_checks(info, work, args)
    if not args.keep:
        down_if_up(labmod, lb_name)
    return result


def scale_checks(info, work, args):
    db = info["db_container"]
    names = psql(db, "moncabinet", "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    names = names.split()
    checks = {"tables": len(names)}
    load = load1()
    by_hand = 0.0
    for name in names:
        by_hand += sh(f"docker exec {db} psql -U {info['db_user']} -d moncabinet -XAtc"
                      f" 'SELECT count(*) FROM {name}' >/dev/null")
    checks["count_by_hand_s"] = {"seconds": by_hand, "load1": load}
    one_session = "\n".join(f"SELECT count(*) FROM {n};" for n in names)
    load = load1()
    started = time.monotonic()
    psql(db, "moncabinet", one_session)
    checks["count_one_session_s"] = {"seconds": time.monotonic() - started, "load1": load}
    for label, count, checksum in (("db_info exact counts", "exact", []),
                                   ("db_info estimated counts", "estimate", []),
                                   ("db_info exact counts + checksums of every table", "exact", names)):
        load = load1()
        call = module_call(info, work, bench_call="info", bench_count=count, bench_checksum_tables=checksum)
        checks[label] = {"task_s": call["task_s"], "wall_s": call["wall_s"], "load1": load,
                         "elapsed_ms": call["result"].get("elapsed_ms")}
        log(f"{label}: task {call['task_s']} s (load {load})")
    host = dbops_vars(info, work)
    host["dbops_backup_dir"] = str(work / "backups")
    inventory = write_inventory(work / "check-inventory.json", {"bench": host})
    load = load1()
    proc, total = run_ansible(CHECK_PLAYBOOK, inventory)
    tasks = profile_tasks(proc.stdout)
    checks["check.yml"] = {"wall_s": total, "rc": proc.returncode, "load1": load, "tasks": len(tasks),
                           "slowest": sorted(tasks, key=lambda t: t[1], reverse=True)[:5]}
    log(f"check.yml: {total:.2f} s, rc {proc.returncode}")
    del args
    return checks


# --------------------------------------------------------------------------- rendering


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def spread(st, digits=2):
    if not st:
        return "-"
    if st["n"] == 1:
        return fmt(st["median"], digits)
    return f"{fmt(st['median'], digits)} ({fmt(st['min'], digits)}–{fmt(st['max'], digits)})"


def cell(text):
    return str(text).replace("|", "\\|")


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}×"


def ok_runs(runs, mode, kind):
    return [r for r in runs if r["mode"] == mode and r["kind"] == kind and "failed" not in r]


def repetitions(data):
    return {m: len({r["rep"] for r in data["runs"] if r["mode"] == m}) for m in data["modes"]}


def consolidation_table(data):
    """{mode: {kind: {'total': stats, 'downtime': stats, 'load': stats}}}."""
    table = {}
    for mode in data["modes"]:
        for kind in KINDS:
            runs = [r for r in data["runs"] if r["mode"] == mode and r["kind"] == kind and "failed" not in r]
            if runs:
                table.setdefault(mode, {})[kind] = {
                    "total": stats([r["total_s"] for r in runs]),
                    "downtime": stats([r["downtime_s"] for r in runs]),
                    "load": stats([r["load1"] for r in runs])}
    return table


MODE_TEXT = {"mounted": "mounted (restart)", "created": "created (recreate)", "compose": "Compose",
             "sigterm": "mounted, app ignores SIGTERM"}
COLOURS = {"shell": "#7f7f7f", "peer": "#e69f00", "playbook": "#0072b2"}


def svg_plot(table):
    """Two panels of grouped bars (downtime, total) per mode; plain SVG, no library."""
    modes = list(table)
    width, panel_h, top, left = 760, 230, 40, 60
    group_w = (width - left - 20) / max(1, len(modes))
    bar_w = group_w / 4.5
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 90}" '
             'font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    for p, (key, title) in enumerate((("downtime", "App downtime, polled every 20 ms (s)"),
                                      ("total", "Total wall time (s)"))):
        y0 = top + p * (panel_h + 40)
        values = [table[m][k][key]["max"] for m in modes for k in table[m] if table[m][k][key]]
        vmax = max(values or [1]) * 1.1
        plot_h = panel_h - 50
        parts.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{left}" y1="{y0 + plot_h}" x2="{width - 20}" y2="{y0 + plot_h}" '
                     'stroke="black"/>')
        for tick in range(5):
            v = vmax * tick / 4
            y = y0 + plot_h - plot_h * tick / 4
            parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        for g, mode in enumerate(modes):
            gx = left + g * group_w + bar_w * 0.5
            for b, kind in enumerate(KINDS):
                st = table[mode].get(kind, {}).get(key)
                if not st:
                    continue
                x = gx + b * bar_w * 1.2
                h = plot_h * st["median"] / vmax
                y = y0 + plot_h - h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                             f'fill="{COLOURS[kind]}"><title>{kind} {mode}: median {st["median"]:.2f} s'
                             f'</title></rect>')
                lo = y0 + plot_h - plot_h * st["min"] / vmax
                hi = y0 + plot_h - plot_h * st["max"] / vmax
                cx = x + bar_w / 2
                parts.append(f'<line x1="{cx:.1f}" y1="{lo:.1f}" x2="{cx:.1f}" y2="{hi:.1f}" '
                             'stroke="black"/>')
                parts.append(f'<text x="{cx:.1f}" y="{hi - 3:.1f}" text-anchor="middle" font-size="10">'
                             f'{st["median"]:.1f}</text>')
            parts.append(f'<text x="{gx + bar_w * 1.7:.1f}" y="{y0 + plot_h + 16}" text-anchor="middle">'
                         f'{MODE_TEXT.get(mode, mode)}</text>')
    ly = 2 * panel_h + 70
    for i, kind in enumerate(KINDS):
        x = left + i * 220
        label = {"shell": "shell sequence", "peer": "peer playbook",
                 "playbook": "qadhya.dbops consolidate.yml"}
        parts.append(f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{COLOURS[kind]}"/>')
        parts.append(f'<text x="{x + 18}" y="{ly}">{label[kind]}</text>')
    parts.append(f'<text x="{width - 20}" y="{ly}" text-anchor="end" font-size="10">'
                 'bars: median; lines: min–max</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def load_results():
    out = {}
    for name in (*SECTIONS, "machine"):
        path = RESULTS / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    # A section stopped halfway: what it measured, flagged as such in the text.
    partial = RESULTS / "consolidate.partial.json"
    if partial.exists():
        # Runs of a section that was stopped halfway (or is still going) join the finished ones.
        runs = {(r["mode"], r["kind"], r["rep"]): r for r in out.get("consolidate", {}).get("runs", [])}
        runs.update({(r["mode"], r["kind"], r["rep"]): r for r in json.loads(partial.read_text())})
        runs = list(runs.values())
        modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
        out["consolidate"] = {"runs": runs, "modes": modes}
    partial = RESULTS / "hosts.partial.json"
    if "hosts" not in out and partial.exists():
        out["hosts"] = json.loads(partial.read_text())
    partial = RESULTS / "scale.partial.json"
    if "scale" not in out and partial.exists():
        out["scale"] = {**json.loads(partial.read_text()), "partial": True}
    return out


def machine_facts():
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1048576, 1),
            "kernel": platform.release(),
            "docker": out("docker", "version", "--format", "{{.Server.Version}}"),
            "ansible_core": (out(ansible_bin("ansible-playbook"), "--version").splitlines() or ["?"])[0],
            "python": platform.python_version(),
            "zstd": next((w.strip(",") for w in out("zstd", "--version").split() if w.startswith("v")), "?")}


def render_consolidation(data, lines):
    table = consolidation_table(data)
    lines += [
        "## 1. Consolidation, three ways",
        "",
        "Repetitions started per mode: "
        + ", ".join(f"{MODE_TEXT.get(m, m)} {n}" for m, n in repetitions(data).items())
        + " (`runs`: those that finished); the three kinds in rotating order (each goes first,",
        "second and third in turn), every run on a freshly reset lab instance. Cells: median",
        "(min–max) in seconds; load is the 1-minute load average when the run started.",
        "",
        "![downtime and total per variant](benchmarks.svg)",
        "",
        "| mode | kind | runs | downtime (s) | total (s) | downtime / shell | total / shell | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, kinds in table.items():
        base = kinds.get("shell")
        for kind, st in kinds.items():
            dt = ratio(st["downtime"]["median"] if st["downtime"] else None,
                       base["downtime"]["median"] if base and base["downtime"] else None)
            tt = ratio(st["total"]["median"], base["total"]["median"] if base else None)
            lines.append(f"| {MODE_TEXT.get(mode, mode)} | {kind} | {st['total']['n']} | "
                         f"{spread(st['downtime'])} | "
                         f"{spread(st['total'])} | {dt} | {tt} | {spread(st['load'])} |")
    lines.append("")
    failed = [r for r in data["runs"] if "failed" in r]
    if failed:
        lines += ["Runs that failed (left out of the medians; on an overloaded machine a lock wait or a",
                  "health timeout can end a run, and the playbook then rolls back):", ""]
        lines += [f"- {MODE_TEXT.get(r['mode'], r['mode'])}, {r['kind']}, repetition {r['rep'] + 1}, after "
                  f"{r['total_s']:.0f} s (load {r['load1']}): {cell(r['failed'])}" for r in failed]
        lines.append("")
    # Inside the windows: the median playbook and peer run of the first mode.
    with_playbook = [m for m in data["modes"] if ok_runs(data["runs"], m, "playbook")]
    for mode in with_playbook[:1]:
        pbs = sorted(ok_runs(data["runs"], mode, "playbook"),
                     key=lambda r: r["total_s"])
        peers = sorted(ok_runs(data["runs"], mode, "peer"),
                       key=lambda r: r["total_s"])
        shells = sorted(ok_runs(data["runs"], mode, "shell"),
                        key=lambda r: r["total_s"])
        if pbs:
            med_run = pbs[len(pbs) // 2]
            window = downtime_tasks(med_run["tasks"])
            lines += [f"### Inside the downtime window ({MODE_TEXT[mode]}, median playbook run, "
                      "profile_tasks)",
                      "", "| task | s |", "|---|---:|"]
            lines += [f"| {cell(n)} | {s:.2f} |" for n, s in window]
            lines += [f"| **sum** | **{sum(s for _, s in window):.2f}** |", "",
                      f"Polled downtime of that run: {fmt(med_run['downtime_s'])} s; "
                      f"{len(med_run['tasks'])} tasks in all, "
                      f"{sum(s for _, s in med_run['tasks']):.2f} s of task "
                      f"time in {med_run['total_s']:.2f} s of wall time.", ""]
        if peers:
            med_run = peers[len(peers) // 2]
            lines += [f"Peer playbook, median run ({MODE_TEXT[mode]}): "
                      + ", ".join(f"{cell(n.removeprefix('Peer | '))} {s:.2f} s" for n, s in med_run["tasks"]
                                  if s >= 0.05) + ".", ""]
        if shells:
            med_run = shells[len(shells) // 2]
            lines += ["", f"Shell sequence, median run ({MODE_TEXT[mode]}): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in med_run["steps"].items()) + ".", ""]
    return table


def render_sigterm(table, lines):
    """What an app that ignores SIGTERM costs, from the sigterm rows next to the mounted ones."""
    if not table or "sigterm" not in table or "mounted" not in table:
        return
    rows = []
    for kind in KINDS:
        a, b = table["mounted"].get(kind), table["sigterm"].get(kind)
        if a and b:
            rows.append(f"{kind} {b['total']['median'] - a['total']['median']:+.1f} s total, "
                        f"{(b['downtime']['median'] or 0) - (a['downtime']['median'] or 0):+.1f} s downtime")
    lines += ["### An app that ignores SIGTERM", "",
              "The `sigterm` rows run the lab app with SIGTERM ignored (a bench-only image,",
              f"`{SIGTERM_IMAGE}`, built from the lab's: as Node does as PID 1 without an init).",
              "Every `docker stop` then waits its whole grace period (10 s by default) and kills the",
              "app. Against the mounted rows: " + "; ".join(rows) + ".",
              "The app keeps answering during the grace period, so the outage seen from outside",
              "grows less than the run; the playbook stops the app twice (repoint, then switch), the",
              "shell and the peer once. What a user can set: run the app under an init",
              "(`docker run --init`, Compose `init: true`) or make it handle SIGTERM; shorten the",
              "grace period (`dbops_stop_timeout`, default 10 s, for every stop of the run; the",
              "shell's `docker stop -t`, `docker run --stop-timeout`, Compose `stop_grace_period`) when",
              "the app has nothing to flush.", ""]


HEALTH_TEXT = [
    "### What the app's healthcheck settings cost", "",
    "The window (`qadhya.dbops.app_switch`) closes on our own probe: the container running and the",
    "health URL answering 200, polled every 50 ms from the start, as the shell and the peer playbook",
    "poll it. Docker runs a container's first health check one `--interval` after its start (the",
    "lab image: 1 s; Docker's default: 30 s; `--start-interval` shortens that, but needs Docker 25",
    "and this machine runs 20.10); when the image has a `HEALTHCHECK`, the module waits for",
    "Docker's `healthy` only after the window has closed, counting every table again meanwhile, so",
    "a long interval makes the run longer, not the downtime: with Docker's default of 30 s, about",
    "30 s longer. A user can set a low `--health-interval` (1–2 s) on the app, or",
    "`dbops_wait_docker_healthy: false`, which ends each start at the first 200 (what the shell and",
    "the peer playbook wait for). Without a health URL Docker's `healthy` is the only sign, and the",
    "window waits for it: set `dbops_health_url`.", ""]


def median_run(runs):
    runs = sorted(runs, key=lambda r: r["total_s"])
    return runs[len(runs) // 2] if runs else None


def render_findings(res, lines):
    """The targets of the issue against this run's numbers, and what bounds each."""
    lines += ["## What dominates, against the targets", ""]
    table = consolidation_table(res["consolidate"]) if "consolidate" in res else {}
    for mode, kinds in table.items():
        sh_, pe, pb = (kinds.get(k) for k in KINDS)
        if sh_ and pb and sh_["downtime"] and pb["downtime"]:
            lines.append(f"- {MODE_TEXT.get(mode, mode)}: downtime playbook/shell "
                         f"{ratio(pb['downtime']['median'], sh_['downtime']['median'])} (target ≤ 1.5×), "
                         f"peer/shell {ratio(pe and pe['downtime']['median'], sh_['downtime']['median'])}; "
                         f"total playbook/shell {ratio(pb['total']['median'], sh_['total']['median'])} "
                         "(target ≤ 3×), peer/shell "
                         f"{ratio(pe and pe['total']['median'], sh_['total']['median'])}.")
    runs = res.get("consolidate", {}).get("runs", [])
    pb = median_run(ok_runs(runs, "mounted", "playbook"))
    per_task = None
    over = res.get("overhead", {}).get("cases", {})
    start = over.get("start-up: 1 debug task, 1 host")
    cmd = over.get("20 command tasks, 1 host, pipelining on")
    if start and cmd:
        per_task = (cmd["median"] - start["median"]) / 19
    if pb:
        window = downtime_tasks(pb["tasks"])
        n, task_sum = len(pb["tasks"]), sum(s for _, s in pb["tasks"])
        lines.append(f"- The playbook's median mounted run: {n} tasks, {task_sum:.1f} s of task time, "
                     f"{task_sum / max(n, 1):.2f} s a task on average"
                     + (f"; a bare module task costs {per_task:.2f} s on this machine at this load, and "
                        f"{sum(1 for _, sec in pb['tasks'] if sec >= 0.2)} of its tasks run a module"
                        if per_task else "") + ".")
        if window:
            lines.append(f"- Its downtime window is {len(window)} tasks, {sum(s for _, s in window):.2f} s "
                         f"of task time for {fmt(pb['downtime_s'])} s polled: every task boundary inside "
                         "the window (module build, new Python, imports, a new Docker or PostgreSQL "
                         "connection) is downtime the shell does not have.")
    if pb:
        lines += where_the_time_goes(pb)
    sc = res.get("scale")
    if sc and sc.get("raw") and sc.get("backups"):
        lines += backup_findings(sc)
    ho = res.get("hosts")
    if ho:
        one = stats([r["total_s"] for r in ho["runs"] if r["hosts"] == 1 and "failed" not in r])
        three = stats([r["total_s"] for r in ho["runs"] if r["hosts"] == 3 and "failed" not in r])
        if one and three:
            lines.append(f"- 3 hosts / 1 host: {ratio(three['median'], one['median'])} (target ≤ 1.3×); "
                         "on 2 cores three hosts' module runs share the same CPUs, which bounds it.")
    lines.append("")


def where_the_time_goes(run, slow=0.2):
    """The median run's module calls that cost `slow` s or more, and what the rest adds up to."""
    big = [(name, sec) for name, sec in run["tasks"] if sec >= slow]
    small = [sec for _name, sec in run["tasks"] if sec < slow]
    parts = ", ".join(f"{cell(name.split(' : ')[-1])} {sec:.2f} s" for name, sec in big)
    rest = run["total_s"] - sum(sec for _name, sec in run["tasks"])
    return [f"- Where its {run['total_s']:.1f} s go: {parts}; {len(small)} other tasks (includes, facts set, "
            f"checks skipped or passed, none starting a module on the host) {sum(small):.2f} s together; "
            f"`ansible-playbook`'s start-up and the rest {rest:.2f} s."]


def backup_findings(sc):
    """The backup targets against the scale section, and the default it supports."""
    def raw(prefix):
        return next((r for r in sc["raw"] if r["label"].startswith(prefix)), None)

    def case(fmt_, level, verify):
        return next((b for b in sc["backups"] if b["task_s"]
                     and (b["format"], b["level"], b["verify"]) == (fmt_, level, verify)), None)
    gz = raw("pg_dump | gzip (-6)")
    default = case("custom", 6, "structure")
    out = []
    if not (gz and default):
        return out
    out.append(f"- Default verified backup (`custom`, level 6, `structure`) vs raw `pg_dump | gzip`: "
               f"{ratio(gz['seconds'], default['task_s'])} the throughput (target ≥ 1.0×), output "
               f"{ratio(default['bytes'], gz['bytes'])} the size.")
    verified = [b for b in sc["backups"] if b["verify"] != "none" and b["task_s"]
                and b["bytes"] and b["bytes"] <= gz["bytes"]]
    if verified:
        best = min(verified, key=lambda b: b["task_s"])
        out.append(f"- Fastest verified backup no larger than gzip's: `{best['format']}` level "
                   f"{best['level']}, `{best['verify']}`, {ratio(gz['seconds'], best['task_s'])} the "
                   f"throughput of raw `pg_dump | gzip -6` (target ≥ 1.6×), output "
                   f"{ratio(best['bytes'], gz['bytes'])} the size.")
    none = case("custom", 6, "none")
    if none:
        extra = default["task_s"] - none["task_s"]
        out.append(f"- Structural verification (`pg_restore --list`, the file read back): {extra:+.2f} s, "
                   f"{100 * extra / none['task_s']:+.0f} % of the dump (target ≤ 5 %; runs of the same case "
                   "differ by a few per cent at this size).")
    fc = raw("pg_dump -Fc")
    if fc:
        out.append(f"- `custom` is compressed by `pg_dump` itself, in one thread: raw `pg_dump -Fc > file` "
                   f"took {fc['seconds']:.1f} s against raw `pg_dump | gzip`'s {gz['seconds']:.1f} s, and "
                   "the default cannot be faster than that floor (zlib, the only method of PostgreSQL 15's "
                   "`pg_dump`; 16 and later add lz4 and zstd). The module adds the sha256 of the stream, the "
                   "row counts and content checksums taken in the dump's own snapshot beside it, and the "
                   "read-back of the verification.")
    return out


def render_hosts(data, lines):
    failed = [r for r in data["runs"] if "failed" in r]
    data = {"runs": [r for r in data["runs"] if "failed" not in r]}
    one = stats([r["total_s"] for r in data["runs"] if r["hosts"] == 1])
    three = stats([r["total_s"] for r in data["runs"] if r["hosts"] == 3])
    d1 = stats([d for r in data["runs"] if r["hosts"] == 1 for d in r["downtime_s"]])
    d3 = stats([d for r in data["runs"] if r["hosts"] == 3 for d in r["downtime_s"]])
    lines += ["## 4. One host vs three in one run", "",
              "`consolidate.yml` on 1 lab instance, then on 3 at once (one inventory, forks 10, no `prod`",
              "group so no `serial`), alternating, each instance reset before each run.", "",
              "| hosts | total (s) | downtime per host (s) | load |", "|---|---:|---:|---:|",
              f"| 1 | {spread(one)} | {spread(d1)} | "
              f"{spread(stats([r['load1'] for r in data['runs'] if r['hosts'] == 1]))} |",
              f"| 3 | {spread(three)} | {spread(d3)} | "
              f"{spread(stats([r['load1'] for r in data['runs'] if r['hosts'] == 3]))} |", "",
              f"3 hosts / 1 host, total: {ratio(three and three['median'], one and one['median'])}; "
              f"downtime: {ratio(d3 and d3['median'], d1 and d1['median'])}.", ""]
    lines += [f"- failed: {r['hosts']} host(s), after {r['total_s']:.0f} s (load {r['load1']}): "
              f"{cell(r['failed'])}" for r in failed] + ([""] if failed else [])


def render_overhead(data, lines):
    cases = data["cases"]

    def med(label):
        st = cases.get(label)
        return st["median"] if st else None
    start = med("start-up: 1 debug task, 1 host")
    per = {}
    for key, label in (("debug", "20 debug tasks (no module run), 1 host"),
                       ("command", "20 command tasks, 1 host, pipelining on"),
                       ("command-nopipe", "20 command tasks, 1 host, pipelining off")):
        if med(label) and start:
            per[key] = (med(label) - start) / 19
    lines += ["## 5. Where the time goes: Ansible's own cost", "",
              "Synthetic playbooks on `ansible_connection: local` hosts, wall time of `ansible-playbook`,",
              f"median (min–max) of {cases[next(iter(cases))]['n']} runs; load during the runs "
              f"{spread(data.get('load1'))}.", "",
              "| case | wall (s) |", "|---|---:|"]
    lines += [f"| {cell(label)} | {spread(st)} |" for label, st in cases.items()]
    lines += [""]
    if start:
        lines.append(f"- Start-up of `ansible-playbook` with one trivial task: {start:.2f} s.")
    if "debug" in per:
        lines.append("- A task that runs on the controller only (`debug`, `set_fact`): "
                     f"{per['debug']:.3f} s.")
    if "command" in per:
        lines.append(f"- A task that runs a module (AnsiballZ payload, new Python): {per['command']:.2f} s "
                     f"with pipelining, {fmt(per.get('command-nopipe'))} s without.")
    facts = med("1 debug task, 1 host, gather_facts: true")
    if facts and start:
        lines.append(f"- `gather_facts: true` costs {facts - start:.2f} s per play and host.")
    f1, f10 = med("20 command tasks, 3 hosts, forks 1"), med("20 command tasks, 3 hosts, forks 10")
    free = med("20 command tasks, 3 hosts, forks 10, strategy free")
    if f1 and f10:
        lines.append(f"- 3 hosts × 20 module tasks: forks 1 {f1:.2f} s, forks 10 {f10:.2f} s, "
                     f"strategy free {fmt(free)} s: on 2 cores, parallel hosts share the same CPUs.")
    lines.append("")


def render_scale(data, lines):
    size_mb = data["db_bytes"] / 1e6
    raw_gzip = next((r for r in data["raw"] if r["label"].startswith("pg_dump | gzip (-6)")), None)
    base = size_mb / raw_gzip["seconds"] if raw_gzip else None
    lines += ["## 2. Backups at scale", "",
              f"A generated `moncabinet` of {data['db_bytes'] / 1e9:.2f} GB on disk (`pg_database_size`), "
              f"{data['tables']} tables (three large, ~{size_mb / 3.3:.0f} MB each, the rest small), "
              f"built with `generate_series` in {data['generate_s']:.0f} s. Throughput is MB of database "
              "size per second.",
              "Module rows: the task's time (profile_tasks: the module call, its dump, checksum and",
              "verification, without `ansible-playbook` start-up); raw rows: the shell pipe's wall time.",
              "Module runs and raw runs are interleaved.", "",
              "| what | verify | time (s) | MB/s of DB | output MB | × raw gzip | load |",
              "|---|---|---:|---:|---:|---:|---:|"]
    none_time = {}
    for b in data["backups"]:
        if b["verify"] == "none":
            none_time[(b["format"], b["level"])] = b["task_s"]
    for b in data["backups"]:
        tp = size_mb / b["task_s"] if b["task_s"] else None
        lines.append(f"| db_backup `{b['format']}` level {b['level']} | {b['verify']} | {fmt(b['task_s'])} | "
                     f"{fmt(tp, 1)} | {fmt((b['bytes'] or 0) / 1e6, 1)} | {ratio(tp, base)} | {b['load1']} |")
    for r in data["raw"]:
        tp = size_mb / r["seconds"]
        lines.append(f"| raw `{cell(r['label'])}` | none | {r['seconds']:.2f} | {tp:.1f} | "
                     f"{fmt((r['bytes'] or 0) / 1e6, 1)} | {ratio(tp, base)} | {r['load1']} |")
    lines.append("")
    custom = {b["verify"]: b["task_s"] for b in data["backups"]
              if b["format"] == "custom" and b["level"] == 6}
    if custom.get("none"):
        lines.append("Cost of each verification level (custom, level 6), over `verify: none`:")
        lines.append("")
        for level in ("checksum", "structure", "restore"):
            if custom.get(level):
                extra = custom[level] - custom["none"]
                lines.append(f"- `{level}`: {extra:+.2f} s "
                             f"({100 * extra / custom['none']:+.0f} % of the dump)")
        lines.append("")
    checks = data.get("checks") or {}
    if checks:
        lines += ["## 3. Checks at scale", "", f"On the same database ({checks['tables']} tables).", "",
                  "| check | time (s) | load |", "|---|---:|---:|",
                  f"| `count(*)` per table by hand, one `docker exec psql` each | "
                  f"{checks['count_by_hand_s']['seconds']:.2f} | {checks['count_by_hand_s']['load1']} |",
                  "| `count(*)` of every table in one psql session | "
                  f"{checks['count_one_session_s']['seconds']:.2f} | "
                  f"{checks['count_one_session_s']['load1']} |"]
        for label in ("db_info exact counts", "db_info estimated counts",
                      "db_info exact counts + checksums of every table"):
            if label in checks:
                c = checks[label]
                own = c["elapsed_ms"] / 1000 if c.get("elapsed_ms") is not None else None
                lines.append(f"| `{label}` (the module's own time; whole `ansible-playbook` "
                             f"{fmt(c['wall_s'])} s) | {fmt(own)} | {c['load1']} |")
        c = checks.get("check.yml")
        if c:
            lines.append(f"| daily `check.yml` (whole run, rc {c['rc']}, {c['tasks']} tasks) | "
                         f"{c['wall_s']:.2f} | {c['load1']} |")
            lines += ["", "Slowest tasks of `check.yml`: "
                      + ", ".join(f"{cell(n)} {s:.2f} s" for n, s in c["slowest"]) + "."]
        lines.append("")


def conditions_text(res):
    """How loaded the machine was during this run, and how many runs it made fail."""
    loads, failed, total = [], 0, 0
    for r in res.get("consolidate", {}).get("runs", []) + res.get("hosts", {}).get("runs", []):
        loads.append(r["load1"])
        total += 1
        failed += "failed" in r
    for key in ("backups", "raw"):
        loads += [r["load1"] for r in res.get("scale", {}).get(key, [])]
    if res.get("overhead", {}).get("load1"):
        loads += [res["overhead"]["load1"]["min"], res["overhead"]["load1"]["max"]]
    if not loads:
        return []
    text = [f"**This run**: the 1-minute load average during the measurements was {min(loads):.1f} to "
            f"{max(loads):.1f} (median {statistics.median(loads):.1f}) on {os.cpu_count()} cores,",
            "recorded next to every result."]
    if statistics.median(loads) <= 8:
        text += ["The benchmark ran alone on the machine: that load is its own (PostgreSQL, `pg_dump`,",
                 "the app, Ansible's workers and the poller), the same for every variant it compares."]
    else:
        text += ["The machine was shared with other work: above one process per core the CPUs were",
                 "oversubscribed, and every figure, ours and the shell's alike, is inflated."]
    if statistics.median(loads) > 8:
        text += ["At such a load every process waits for a CPU most of the time: absolute times are",
                 "many times what an idle machine gives, polls every 20 ms become polls every few hundred",
                 "ms (the largest gap is recorded with each run), and the ratios mostly measure how many",
                 "processes each variant starts. Read this run for where the time goes and as a check that",
                 "each part of the benchmark runs, not for the machine's speed; re-run it on a quiet",
                 "machine."]
    if failed:
        text += [f"{failed} of {total} consolidation runs failed, listed below with their reason."]
    return [" ".join(text), ""]


def start_text(res):
    """Where each kind's clock starts, from what the runs recorded (--playbook-from)."""
    starts = {r.get("playbook_from", "incident") for r in res.get("consolidate", {}).get("runs", [])
              if r["kind"] in ("playbook", "baseline") and "failed" not in r}
    if starts == {"repointed"}:
        return ["All three start where the report's step 3 ends (env at `moncabinet`, app restarted",
                "and healthy), done untimed before their clock starts; the playbook's own detection,",
                "backups, migration and proof are inside its time.", ""]
    return ["The shell and the peer start where the report's step 3 ends (env at `moncabinet`, app",
            "restarted and healthy), done untimed before their clock starts; the playbook starts at the",
            "incident and does that repoint itself inside its time, and its migration too.", ""]


def render(args):
    res = load_results()
    facts = res.get("machine") or machine_facts()
    started = facts.get("started_at", "?")
    lines = [
        "# Benchmarks: qadhya.dbops vs the shell sequence and a peer playbook",
        "",
        f"Generated by `bench/run.py` (what `make bench` runs), started {started} UTC. A benchmark",
        "is never a pass/fail test: nothing in CI runs it or reads a timing. Numbers vary with the",
        "machine's load; read the ratios of one run, not the absolute figures.",
        "",
        *conditions_text(res),
        "## Machine",
        "",
        f"- {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB RAM, kernel {facts['kernel']}",
        f"- Docker {facts['docker']}; {facts['ansible_core']}; Python {facts['python']}; "
        f"zstd {facts['zstd']}",
        f"- Load average (1/5/15 min) at the start: {facts.get('load_start', '?')}; "
        f"at the end: {facts.get('load_end', '?')}",
        "",
        "## What is compared",
        "",
        "- **shell**: the report's step 4 as typed by hand: `docker exec … pg_dump | gzip > file`,",
        "  `docker stop`, `DROP DATABASE qadhya` + `ALTER DATABASE moncabinet RENAME TO qadhya` from",
        "  `postgres`, env backup + `sed`, `docker start` (mode created: `docker rm` + `docker run",
        "  --env-file`; Compose: `docker compose stop` / `up -d --force-recreate nextjs`), poll the",
        "  health URL until 200. Nothing is checked.",
        "- **peer**: `bench/peer_consolidate.yml`, the playbook a user would write instead: one task",
        "  per step with `community.docker.docker_container` (stop, start or recreate) or",
        "  `docker_compose_v2`, `community.postgresql.postgresql_query` (connected to `postgres`),",
        "  `ansible.builtin.lineinfile`, `ansible.builtin.uri` with retries every 0.2 s; plus",
        "  the same `pg_dump | gzip` as a `shell` task and one `docker_container_info` to find the",
        "  database's address. No checks, no rollback.",
        "- **playbook**: `ansible-playbook playbooks/consolidate.yml`: pre-checks, verified backups",
        "  (`moncabinet` and the empty `qadhya`), migration, repoint the app at its data, the switch",
        "  (stop, rename, env, start, health), row-count proof, journal, report.",
        "",
        *start_text(res),
        "Downtime, for all three, is polled from outside every 20 ms (each request started on",
        "time in a thread of its own, whatever the previous one waits for): from the last 200",
        "before the outage to the first 200 after it.",
        "",
    ]
    table = None
    if "consolidate" in res:
        table = render_consolidation(res["consolidate"], lines)
        render_sigterm(table, lines)
        lines += HEALTH_TEXT
        (REPO / "docs" / "benchmarks.svg").write_text(svg_plot(table), encoding="utf-8")
    if "scale" in res:
        render_scale(res["scale"], lines)
    if "hosts" in res:
        render_hosts(res["hosts"], lines)
    if "overhead" in res:
        render_overhead(res["overhead"], lines)
    render_findings(res, lines)
    lines += commands_text()
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    log(f"wrote {args.output}")
    return table


def commands_text():
    return ["## Commands", "",
            "```sh",
            "make bench                      # every section, 5 repetitions, 1 GB database",
            "make bench QUICK=1              # 2 repetitions, 50 MB database",
            ".venv/bin/python bench/run.py --prefix h6 -n 5 consolidate   # one section",
            ".venv/bin/python bench/run.py --modes mounted,sigterm consolidate  # some modes (rows merged)",
            ".venv/bin/python bench/run.py render                         # Markdown + SVG from .cache/bench",
            "```", "",
            "Lab instances: `<prefix>bench1` (consolidation), `<prefix>hosts1..3` (1 vs 3 hosts) and",
            "`<prefix>big` (the generated database); the prefix is `QADHYA_IT_PREFIX`, else `bench`.",
            "Each section removes its instances at its end unless `--keep` (a kept `<prefix>big` holding",
            "a database of the same size is reused, not generated again). `--until HH:MM` (UTC) starts",
            "no new repetition or backup case after that time, for a shared machine.", ""]


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"sections to run (default: all, then render): {', '.join(SECTIONS)}, render")
    parser.add_argument("-n", "--repetitions", type=int, help="repetitions per mode (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a 50 MB database")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"consolidation modes (default {','.join(MODES)})")
    parser.add_argument("--gigabytes", type=float, help="size of the generated database (default 1.0)")
    parser.add_argument("--prefix", default=os.environ.get("QADHYA_IT_PREFIX") or "bench",
                        help="lab instance name prefix (default: $QADHYA_IT_PREFIX, else 'bench')")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"),
                        help="Markdown file to write")
    parser.add_argument("--keep", action="store_true", help="leave the lab instances up afterwards")
    parser.add_argument("--append", action="store_true",
                        help="consolidate: add repetitions to the ones measured before, not replace them")
    parser.add_argument("--cases", type=int, help="scale: run only the first N backup cases of each kind")
    parser.add_argument("--results", metavar="DIR",
                        help="where the sections' JSON go (default .cache/bench; a quick run of a few cases "
                             "elsewhere keeps the full run's results)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="consolidate: also run DIR/playbooks/consolidate.yml (another checkout, e.g. "
                             "the previous release) as kind 'baseline', alternating with the others")
    parser.add_argument("--playbook-from", choices=["repointed", "incident"], default="repointed",
                        help="consolidate: the playbook starts where the shell and the peer start, "
                             "the app repointed at its data untimed (default), or at the incident, "
                             "timing its repoint")
    parser.add_argument("--until", metavar="HH:MM",
                        help="UTC time after which no new repetition starts (a shared, busy machine)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in (*SECTIONS, "render")]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}, render")
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if args.repetitions is None:
        args.repetitions = 2 if args.quick else 5
    if args.gigabytes is None:
        args.gigabytes = 0.05 if args.quick else 1.0
    if not args.sections:
        args.sections = [*SECTIONS, "render"]
    return args


def main(argv=None):
    global RESULTS, BASELINE, PLAYBOOK_FROM
    args = parse_args(argv)
    PLAYBOOK_FROM = args.playbook_from
    if args.results:
        RESULTS = Path(args.results).resolve()
    if args.baseline:
        BASELINE = Path(args.baseline).resolve()
    labmod = load_lab()
    RESULTS.mkdir(parents=True, exist_ok=True)
    facts_path = RESULTS / "machine.json"
    runs = [s for s in args.sections if s != "render"]
    if runs:
        facts = machine_facts()
        facts["started_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
        facts["load_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        previous = json.loads(facts_path.read_text()) if facts_path.exists() else {}
        # A section run alone keeps the start of the first one recorded.
        if previous and set(runs) != set(SECTIONS):
            facts["started_at"] = previous.get("started_at", facts["started_at"])
            facts["load_start"] = previous.get("load_start", facts["load_start"])
        facts_path.write_text(json.dumps(facts, indent=1))
    functions = {"consolidate": section_consolidate, "hosts": section_hosts, "overhead": section_overhead,
                 "scale": section_scale}
    with tempfile.TemporaryDirectory(prefix="qadhya-bench-") as tmp:
        for section in runs:
            log(f"section {section} ...")
            data = functions[section](args, labmod, Path(tmp))
            data["finished_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
            (RESULTS / f"{section}.json").write_text(json.dumps(data, indent=1))
    if runs:
        facts = json.loads(facts_path.read_text())
        facts["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        facts_path.write_text(json.dumps(facts, indent=1))
    if "render" in args.sections:
        render(args)


if __name__ == "__main__":
    main()
