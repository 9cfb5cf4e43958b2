#!/usr/bin/env python3
"""Benchmark: consolidate.yml against the incident's hand-run shell sequence.

On a lab instance of its own, alternating, N times each, both starting from
the incident state:

  (a) ansible-playbook playbooks/consolidate.yml (profile_tasks enabled)
  (b) the commands of the 2026-02-11 report, step 4: pg_dump | gzip, docker
      stop, DROP + ALTER DATABASE ... RENAME from `postgres`, sed on the env
      file, docker start, poll /api/health until 200. The report's step 3
      (point the env file at moncabinet, restart) runs first, untimed.

Measured: total wall time, app downtime (first failed health poll after the
app stops -> first 200; polled every 50 ms from outside, for both), backup
time and throughput. Prints medians and ratios and writes docs/benchmarks.md.
A benchmark is never pass/fail: the exit status only says whether it ran.

Usage: python bench/run.py [-n 3] [--instance bench] [--output docs/benchmarks.md]
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
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
LAB_PY = REPO / "lab" / "lab.py"
PLAYBOOK = REPO / "playbooks" / "consolidate.yml"
POLL_S = 0.05


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def lab(*args):
    proc = subprocess.run([sys.executable, str(LAB_PY), *map(str, args)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"lab.py {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        # Refused, reset or cut mid-answer while the app stops: all "not up".
        return None


class HealthPoller:
    """Polls a health URL every 50 ms in a thread; finds the outages afterwards."""

    def __init__(self, url):
        self.url = url
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            self.samples.append((started, http_status(self.url, timeout=0.5)))
            self._stop.wait(max(0.0, POLL_S - (time.monotonic() - started)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def last_outage(self):
        """Seconds from the first non-200 after a 200 to the next 200 (the last such outage)."""
        outage, seen_200, down_since = None, False, None
        for t, code in self.samples:
            if code == 200:
                if down_since is not None:
                    outage = t - down_since
                seen_200, down_since = True, None
            elif seen_200 and down_since is None:
                down_since = t
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
    """The tasks from the last app stop to the start that ends the window."""
    starts = [i for i, (name, _) in enumerate(tasks) if "Start | Start the app" in name]
    if not starts:
        return []
    end = starts[-1]
    stops = [i for i, (name, _) in enumerate(tasks[:end]) if "Stop | Stop the app" in name]
    return tasks[stops[-1]:end + 1] if stops else []


CATEGORIES = (
    ("backups (dump, checksum, verify)", r"qadhya\.dbops\.backup :"),
    ("migrations", r"qadhya\.dbops\.apply_migration :"),
    ("app stop / start / health", r"qadhya\.dbops\.restart_container :"),
    ("rename", r"qadhya\.dbops\.rename_db :"),
    ("env file", r"qadhya\.dbops\.update_env :"),
    ("detection and row counts", r"qadhya\.dbops\.detect_db :|^Count \||^Verify \|"),
    ("report", r"^Report \|"),
)


def categorise(tasks):
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals["everything else (includes, facts, checks)"] = 0.0
    for task, seconds in tasks:
        for name, pattern in CATEGORIES:
            if re.search(pattern, task):
                totals[name] += seconds
                break
        else:
            totals["everything else (includes, facts, checks)"] += seconds
    return totals


def run_playbook(info, workdir):
    inventory = workdir / "inventory.json"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "dbops_env_file": info["env_file"],
        "dbops_db_container": info["db_container"],
        "dbops_app_container": info["app_container"],
        "dbops_target_db": "qadhya",
        "dbops_health_url": info["health_url"],
        "dbops_backup_dir": info["backup_dir"],
        "dbops_migrations_dir": str(REPO / "migrations"),
        "dbops_report_dir": str(workdir / "reports"),
    }
    inventory.write_text(json.dumps({"all": {"hosts": {"bench": host}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
           "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all", "PROFILE_TASKS_SORT_ORDER": "none"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(PLAYBOOK), "-i", str(inventory)]
    with HealthPoller(info["health_url"]) as poller:
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
        total = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"playbook run failed (rc {proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    reports = sorted((workdir / "reports").glob("bench-*.json"))
    report = json.loads(reports[-1].read_text())
    backup = report["backup"]
    tasks = profile_tasks(proc.stdout)
    return {
        "total_s": total,
        "downtime_s": poller.last_outage(),
        "self_reported_downtime_s": report.get("downtime_s"),
        "backup_s": backup["duration_s"],
        "backup_bytes": backup["bytes"],
        "backup_format": backup.get("format", "?"),
        "tasks": tasks,
        "result": report["result"],
    }


def sh(command):
    """Run one shell step as typed by hand (bash, pipefail); returns its duration."""
    started = time.monotonic()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"shell step failed: {command}\n{proc.stderr.strip()}")
    return time.monotonic() - started


def wait_200(url, timeout=120):
    deadline = time.monotonic() + timeout
    while http_status(url) != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered 200")
        time.sleep(POLL_S)


def run_shell(info, workdir):
    db, app, user = info["db_container"], info["app_container"], info["db_user"]
    env_file, url = info["env_file"], info["health_url"]
    dump = Path(info["backup_dir"]) / f"backup-moncabinet-{time.strftime('%Y%m%d-%H%M%S')}.sql.gz"
    # The report's step 3, outside the timed window: point the app at its data.
    sh(f"sed -i 's/^DB_NAME=qadhya$/DB_NAME=moncabinet/' {env_file} && docker restart {app}")
    wait_200(url)
    steps = {}
    with HealthPoller(url) as poller:
        started = time.monotonic()
        steps["pg_dump | gzip"] = sh(f"docker exec {db} pg_dump -U {user} moncabinet | gzip > {dump}")
        stopped = time.monotonic()
        steps["docker stop"] = sh(f"docker stop {app}")
        # Two -c: DROP DATABASE cannot run inside the implicit transaction of one multi-statement -c.
        steps["drop + rename (from postgres)"] = sh(
            f"docker exec {db} psql -U {user} -d postgres -v ON_ERROR_STOP=1"
            " -c 'DROP DATABASE qadhya' -c 'ALTER DATABASE moncabinet RENAME TO qadhya'")
        steps["env backup + sed"] = sh(f"cp -p {env_file} {env_file}.$(date +%Y%m%d-%H%M%S)"
                                       f" && sed -i 's/^DB_NAME=moncabinet$/DB_NAME=qadhya/' {env_file}")
        steps["docker start"] = sh(f"docker start {app}")
        health_started = time.monotonic()
        wait_200(url)
        ended = time.monotonic()
        steps["poll health until 200"] = ended - health_started
        time.sleep(0.2)  # one more poll sees the 200 the loop saw
    return {
        "total_s": ended - started,
        "downtime_s": poller.last_outage(),
        "self_reported_downtime_s": ended - stopped,
        "backup_s": steps["pg_dump | gzip"],
        "backup_bytes": dump.stat().st_size,
        "backup_format": "plain | gzip -6",
        "steps": steps,
    }


def check_end_state(name):
    status = json.loads(lab("status", "--instance", name, "--json"))
    ok = (status["env_db_name"] == "qadhya" and status["health_http"] == 200
          and status["databases"].get("qadhya", {}).get("knowledge_base") == 580
          and "moncabinet" not in status["databases"])
    if not ok:
        raise SystemExit(f"unexpected end state: {json.dumps(status)}")


def med(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def cell(text):
    """Text safe inside a Markdown table cell (task names contain '|')."""
    return str(text).replace("|", "\\|")


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def machine_facts(load_before, load_after):
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"

    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
        "docker": out("docker", "version", "--format", "{{.Server.Version}}"),
        "ansible_core": (out(str(ansible_playbook), "--version").splitlines() or ["?"])[0],
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in load_before),
        "load_after": " ".join(f"{x:.2f}" for x in load_after),
    }


def summary_rows(pb, shell):
    mb = 1_000_000
    rows = [
        ("total wall time (s)", med(pb, "total_s"), med(shell, "total_s")),
        ("app downtime, polled from outside every 50 ms (s)", med(pb, "downtime_s"),
         med(shell, "downtime_s")),
        ("app downtime, as each measures it (s)", med(pb, "self_reported_downtime_s"),
         med(shell, "self_reported_downtime_s")),
        ("backup time (s)", med(pb, "backup_s"), med(shell, "backup_s")),
        ("backup size (MB)", med(pb, "backup_bytes") / mb, med(shell, "backup_bytes") / mb),
    ]
    pb_tp = statistics.median(r["backup_bytes"] / mb / r["backup_s"] for r in pb)
    sh_tp = statistics.median(r["backup_bytes"] / mb / r["backup_s"] for r in shell)
    rows.append(("backup throughput, output MB/s", pb_tp, sh_tp))
    return rows


def render(args, facts, pb, shell, started_at):
    rows = summary_rows(pb, shell)
    median_run = sorted(pb, key=lambda r: r["total_s"])[len(pb) // 2]
    window = downtime_tasks(median_run["tasks"])
    cats = categorise(median_run["tasks"])
    task_sum = sum(s for _, s in median_run["tasks"])
    top = sorted(median_run["tasks"], key=lambda t: t[1], reverse=True)[:8]
    shell_median = sorted(shell, key=lambda r: r["total_s"])[len(shell) // 2]
    lines = [
        "# Benchmarks: consolidate.yml vs the hand-run shell sequence",
        "",
        f"Generated by `make bench` (`bench/run.py -n {args.repetitions}`) on {started_at} UTC.",
        "Numbers vary run to run and with the machine's load: read the ratios, not the",
        "absolute figures. A benchmark is never a pass/fail test.",
        "",
        "## What was compared",
        "",
        "Both start from the incident state of a fresh lab instance (reset before every run),",
        f"alternating (the order flips each repetition), {args.repetitions} run(s) each:",
        "",
        "- **playbook**: `ansible-playbook playbooks/consolidate.yml` — detection, verified",
        "  backup of `moncabinet` (and of the empty `qadhya`), tracked migration, repoint",
        "  the app, then the switch (stop, rename, env, start, health) and the row-count",
        "  verification, report.",
        "- **shell**: the report's step 4 as typed by hand — `docker exec pg_dump | gzip >",
        "  file`, `docker stop`, `DROP DATABASE qadhya` + `ALTER DATABASE moncabinet RENAME TO",
        "  qadhya` from `postgres`, env backup + `sed`, `docker start`, poll health until 200.",
        "  Step 3 of the report (env at `moncabinet` + restart) runs first, untimed. It applies",
        "  no migration and checks nothing. The playbook's total includes its own repoint",
        "  (step 3) and the migration; the shell's does not.",
        "",
        "Downtime is measured the same way for both: an outside poller hits `/api/health`",
        "every 50 ms; downtime is the first failed poll after the app was last healthy to the",
        "next 200. \"As each measures it\" is the playbook's own `downtime_s` (from the",
        "stop task to health 200, so it also counts dispatching the first task and",
        "returning from the last) and, for the shell, `docker stop` to the first 200.",
        "",
        "## Medians",
        "",
        "| measure | playbook | shell | ratio playbook/shell |",
        "|---|---:|---:|---:|",
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    lines += [
        "",
        f"Backups: playbook `{pb[0]['backup_format']}` format (the module's dump, sha256, manifest",
        "and structural verification all inside its time), shell `pg_dump` plain text piped",
        "to `gzip -6` on the host. Throughput is output bytes per second of backup time.",
        "",
        "## Every run",
        "",
        "| run | kind | total (s) | downtime polled (s) | downtime own (s) | backup (s) | backup MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for i, (a, b) in enumerate(zip(pb, shell, strict=True), 1):
        for kind, r in (("playbook", a), ("shell", b)):
            lines.append(f"| {i} | {kind} | {fmt(r['total_s'])} | {fmt(r['downtime_s'])} | "
                         f"{fmt(r['self_reported_downtime_s'])} | {fmt(r['backup_s'])} | "
                         f"{fmt(r['backup_bytes'] / 1_000_000, 1)} |")
    lines += [
        "",
        "## Inside the downtime window (playbook, median run, profile_tasks)",
        "",
        "Tasks from the app stop to health 200, in order:",
        "",
        "| task | s |",
        "|---|---:|",
    ]
    lines += [f"| {cell(name)} | {s:.2f} |" for name, s in window]
    window_sum = sum(s for _, s in window)
    lines += [
        f"| **sum** | **{window_sum:.2f}** |",
        "",
        f"{len(window)} tasks; polled downtime of that run {fmt(median_run['downtime_s'])} s.",
        "The shell's window in its median run: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in shell_median["steps"].items()
                    if k != "pg_dump | gzip") + ".",
        "",
        "## Where the playbook's time goes (median run)",
        "",
        "| part | s | share of task time |",
        "|---|---:|---:|",
    ]
    for name, seconds in sorted(cats.items(), key=lambda kv: kv[1], reverse=True):
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / task_sum:.0f}% |")
    lines += [
        f"| **all tasks** | **{task_sum:.2f}** | |",
        "",
        f"Wall time of that run {median_run['total_s']:.2f} s; the rest is ansible-playbook start-up",
        "and plugin loading. Slowest tasks:",
        "",
        "| task | s |",
        "|---|---:|",
    ]
    lines += [f"| {cell(name)} | {s:.2f} |" for name, s in top]
    n_tasks = len(median_run["tasks"])
    per_task = task_sum / n_tasks if n_tasks else 0
    biggest = max(cats.items(), key=lambda kv: kv[1])
    slowest = max(window, key=lambda t: t[1]) if window else ("-", 0.0)
    shell_start = shell_median["steps"]["docker start"] + shell_median["steps"]["poll health until 200"]
    loads = facts["load_before"].split() + facts["load_after"].split()
    busy = max(float(x) for x in loads) > (facts["nproc"] or 1)
    lines += [
        "",
        "## What dominates",
        "",
        f"- Total time: the playbook ran {n_tasks} tasks, {per_task:.2f} s each on average; the",
        f"  largest part is {biggest[0]} ({biggest[1]:.1f} s). The shell's total is mostly",
        f"  `pg_dump | gzip` ({shell_median['steps']['pg_dump | gzip']:.2f} s of "
        f"{shell_median['total_s']:.2f} s).",
        f"- Downtime: {len(window)} tasks sit between stop and health 200 ({window_sum:.2f} s of task",
        f"  time); the largest is `{slowest[0]}` ({slowest[1]:.2f} s), against",
        f"  {shell_start:.2f} s for the shell's `docker start` + health poll. That task waits for",
        "  Docker's own health status (the image's HEALTHCHECK interval) as well as HTTP 200 and",
        "  checks the env the app really runs with; the shell stops at the first 200. Each of",
        "  the other tasks adds Ansible's per-task cost to work the shell does in one command.",
        "- Backup: the module writes a compressed custom-format dump, hashes it and verifies",
        "  its structure before it counts as done; the shell pipes plain SQL to gzip and",
        "  checks nothing.",
        "",
        "## Machine",
        "",
        f"- {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB RAM, kernel {facts['kernel']}",
        f"- Docker {facts['docker']}; {facts['ansible_core']}; Python {facts['python']}",
        f"- Load average (1/5/15 min) before: {facts['load_before']}, after: {facts['load_after']}."
        + (" The machine was shared and busy during the run: absolute times are inflated and"
           " both sides were slowed; compare figures from the same run only." if busy else ""),
        "",
        "Re-run: `make bench` (or `.venv/bin/python bench/run.py -n 5`).",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--repetitions", type=int, default=3)
    parser.add_argument("--instance", default="bench",
                        help="lab instance of the benchmark's own (default: bench)")
    parser.add_argument("--port", type=int, help="app port (default: a free one)")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"),
                        help="Markdown file to write ('-' for none)")
    parser.add_argument("--keep", action="store_true", help="leave the lab instance up afterwards")
    args = parser.parse_args()
    if args.instance in ("default", "itlab"):
        raise SystemExit("use an instance of the benchmark's own, not a shared one")

    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    up = ["up", "--instance", args.instance] + (["--port", args.port] if args.port else [])
    log(f"lab instance '{args.instance}' ...")
    lab(*up)
    info = json.loads(lab("env", "--instance", args.instance))
    pb_runs, shell_runs = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="qadhya-bench-") as tmp:
            for i in range(args.repetitions):
                order = ("playbook", "shell") if i % 2 == 0 else ("shell", "playbook")
                for kind in order:
                    lab("reset", "--instance", args.instance, "--mode", "mounted")
                    workdir = Path(tmp) / f"{kind}-{i}"
                    workdir.mkdir()
                    if kind == "playbook":
                        result = run_playbook(info, workdir)
                        pb_runs.append(result)
                    else:
                        result = run_shell(info, workdir)
                        shell_runs.append(result)
                    check_end_state(args.instance)
                    log(f"run {i + 1}/{args.repetitions} {kind:8s} total {result['total_s']:6.2f} s, "
                        f"downtime {fmt(result['downtime_s'])} s, backup {result['backup_s']:.2f} s")
    finally:
        if not args.keep:
            lab("down", "--instance", args.instance)
    facts = machine_facts(load_before, os.getloadavg())

    print(f"\n{'measure':52s} {'playbook':>9s} {'shell':>9s} {'ratio':>8s}")
    for name, a, b in summary_rows(pb_runs, shell_runs):
        print(f"{name:52s} {fmt(a):>9s} {fmt(b):>9s} {ratio(a, b):>8s}")
    median_run = sorted(pb_runs, key=lambda r: r["total_s"])[len(pb_runs) // 2]
    print("\ninside the downtime window (playbook, median run):")
    for name, seconds in downtime_tasks(median_run["tasks"]):
        print(f"  {seconds:6.2f}  {name}")
    if args.output != "-":
        Path(args.output).write_text(render(args, facts, pb_runs, shell_runs, started_at), encoding="utf-8")
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
