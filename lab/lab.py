#!/usr/bin/env python3
"""Local lab that reproduces the 2026-02-11 incident (see docs / MISSION.md).

One instance = a PostgreSQL container (15 by default, `up --pg 17`) holding
the real data in `moncabinet` and an empty `qadhya`, an app container whose
env file says DB_NAME=qadhya, and a state directory on the host. `reset` brings an instance back to that state
in seconds by copying a cached, pre-loaded data directory.

Usage: lab.py build|up|reset|down|status|env|recreate-app [options]

App modes: `mounted` (the env file's directory bind-mounted, read at start),
`created` (`docker run --env-file`, env fixed at creation) and `compose` (the
app and PostgreSQL as services of a Docker Compose project whose directory
holds the `.env`, read through `env_file:` at creation).
"""

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
IMAGES_DIR = LAB_DIR / "images"
PG_IMAGE = "qadhya-lab/postgres:15"
APP_IMAGE = "qadhya-lab/app:1"
IMAGES = ((PG_IMAGE, IMAGES_DIR / "postgres"), (APP_IMAGE, IMAGES_DIR / "app"))
# PostgreSQL server version -> (image, build context, Debian suite of its base
# image). The 17 context is ../postgres with postgres17/'s files over it: one
# entrypoint for both. Each version has its own seed (a data directory is
# only readable by the major version that wrote it).
DEFAULT_PG = "15"
PG_SERVERS = {
    "15": (PG_IMAGE, (IMAGES_DIR / "postgres",), "bookworm"),
    "17": ("qadhya-lab/postgres:17", (IMAGES_DIR / "postgres", IMAGES_DIR / "postgres17"), "trixie"),
}

DB_USER = "moncabinet"
DB_PASSWORD = "lab-moncabinet-pw-not-secret"  # lab only, same in every instance
DATA_DB = "moncabinet"
INCIDENT_DB = "qadhya"
SEED_FILES = (LAB_DIR / "generate_data.py", LAB_DIR / "seed" / "20-qadhya.sql")

DEFAULT_INSTANCE = "default"
DEFAULT_PORT = 3000
FIRST_EXTRA_PORT = 3001
MODES = ("mounted", "created", "compose")
COMPOSE_FILE = "compose.yaml"
APP_SERVICE = "nextjs"
DB_SERVICE = "postgres"
LABEL = "qadhya.lab.instance"

ENV_TEMPLATE = """\
# Qadhya app settings (lab instance {name}) - read by the app at start
DB_NAME={db_name}
DB_USER={user}
DB_PASSWORD={password}
DB_HOST=postgres
DB_PORT=5432
NODE_ENV=production
APP_TITLE="Qadhya – Assistant juridique"
"""

# Compose reads .env with dotenv rules: quotes removed, a ` # comment` after an
# unquoted value is no part of it. The compose instance's file uses both.
COMPOSE_ENV_TEMPLATE = ENV_TEMPLATE.replace(
    "DB_NAME={db_name}\n", "DB_NAME={db_name}  # the app's database (the report's incident: it is empty)\n"
).replace('APP_TITLE="Qadhya – Assistant juridique"', 'APP_TITLE="Qadhya – Assistant juridique #1"  # quoted')

# The project's compose.yaml: the report's two containers as services. The
# network is the lab's own (created and labelled by lab.py), so `down` works
# the same in every mode.
COMPOSE_TEMPLATE = """\
# Lab instance {name}: written by lab/lab.py (mode compose)
name: {project}
services:
  postgres:
    image: {pg_image}
    container_name: {db_container}
    restart: unless-stopped
    labels:
      {label}: "{name}"
    environment:
      POSTGRES_USER: {user}
      POSTGRES_PASSWORD: {password}
      POSTGRES_DB: {data_db}
    volumes:
      - {pgdata}:/var/lib/postgresql/data
  nextjs:
    image: {app_image}
    container_name: {app_container}
    init: true
    restart: unless-stopped
    labels:
      {label}: "{name}"
    env_file: .env
    ports:
      - "127.0.0.1:{port}:3000"
    networks:
      default:
        aliases: [app]
    depends_on:
      postgres:
        condition: service_healthy
networks:
  default:
    name: {network}
    external: true
"""
# Row counts of every public table, in one round trip per database.
COUNT_SQL = """
SELECT table_name,
       (xpath('/row/c/text()', query_to_xml(
           format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text
FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
ORDER BY table_name
"""


class LabError(Exception):
    """An error the user can act on; printed as one line."""


def lab_root():
    return Path(os.environ.get("QADHYA_LAB_ROOT", "/var/tmp/qadhya-lab"))


def log(message):
    print(f"lab: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- docker


def docker(*args, check=True, timeout=None, stdin=None):
    """Run the docker CLI with an argv list; returns the CompletedProcess."""
    env = dict(os.environ)
    env.pop("DOCKER_BUILDKIT", None)  # buildx is not installed: the legacy builder is the one that works
    try:
        proc = subprocess.run(["docker", *args], check=False, capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=stdin)
    except FileNotFoundError:
        raise LabError("the docker CLI is not installed (apt-get install docker.io)") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise LabError(f"docker {args[0]} failed: {detail}")
    return proc


def docker_endpoint():
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host.removeprefix("unix://")


def require_engine():
    try:
        proc = docker("version", "--format", "{{.Server.APIVersion}}", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0 or not proc.stdout.strip():
        raise LabError(f"no Docker engine answers at {docker_endpoint()}; "
                       "start it with `dockerd &` or `systemctl start docker`")


def image_id(image):
    proc = docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def container_state(name):
    """('running'|'exited'|..., 'healthy'|'unhealthy'|'starting'|'') or None if absent."""
    fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    proc = docker("inspect", "--format", fmt, name, check=False)
    if proc.returncode != 0:
        return None
    status, _, health = proc.stdout.strip().partition(" ")
    return status, health


def remove_container(name):
    docker("rm", "-f", "-v", name, check=False)


def wait_healthy(name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = container_state(name)
        if state is None or state[0] in ("exited", "dead"):
            logs = docker("logs", "--tail", "5", name, check=False).stderr.strip().splitlines()
            raise LabError(f"container {name} stopped while starting: {logs[-1] if logs else 'no logs'}")
        if state[1] == "healthy":
            return
        time.sleep(0.1)
    raise LabError(f"container {name} not healthy after {timeout}s")


def http_status(url, timeout=3):
    """HTTP status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_http(url, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = http_status(url, timeout=2)
        if code is not None:
            return code
        time.sleep(0.05)
    raise LabError(f"nothing answers at {url} after {timeout}s")


# --------------------------------------------------------------------------- build


CONTEXT_LABEL = "qadhya.lab.context"


def context_files(*contexts):
    """{relative path: file} of build context directories, a later one's files over an earlier one's."""
    files = {}
    for context in contexts:
        files.update((str(p.relative_to(context)), p) for p in Path(context).rglob("*") if p.is_file())
    return files


def context_digest(*contexts):
    """Digest of a build context, so an edited Dockerfile or app rebuilds its image."""
    digest = hashlib.sha256()
    # Sorted as paths (by component), the order this digest has always used.
    for rel, path in sorted(context_files(*contexts).items(), key=lambda item: Path(item[0])):
        digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_image(image, contexts, force=False):
    """Build `image` from its context directories unless built from the same context already."""
    wanted = context_digest(*contexts)
    if not force and image_context(image) == wanted:
        return
    log(f"building {image}")
    started = time.monotonic()
    build = ("build", "-q", "--label", f"{CONTEXT_LABEL}={wanted}", "-t", image)
    if len(contexts) == 1:
        proc = docker(*build, str(contexts[0]), check=False)
    else:
        # Layered directories: the merged context goes to docker as a tar on stdin.
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for rel, path in sorted(context_files(*contexts).items()):
                    tar.add(path, arcname=rel)
            tar_file.seek(0)
            proc = docker(*build, "-", check=False, stdin=tar_file)
    if proc.returncode != 0:
        raise LabError(f"building {image} failed: {proc.stderr.strip().splitlines()[-1:]}")
    log(f"built {image} in {time.monotonic() - started:.1f}s")


def image_context(image):
    proc = docker("image", "inspect", "--format",
                  '{{ index .Config.Labels "%s" }}' % CONTEXT_LABEL, image, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_images(force=False, versions=(DEFAULT_PG,)):
    """The app image and the PostgreSQL image of each server version in `versions`."""
    subprocess.run(["bash", str(IMAGES_DIR / "base-image.sh")], check=True)
    for image, context in IMAGES:
        build_image(image, (context,), force)
    for version in versions:
        if version == DEFAULT_PG:
            continue  # in IMAGES
        image, contexts, suite = PG_SERVERS[version]
        subprocess.run(["bash", str(IMAGES_DIR / "base-image.sh"), suite], check=True)
        build_image(image, contexts, force)


# --------------------------------------------------------------------------- seed


def seed_key(pg_image=PG_IMAGE):
    digest = hashlib.sha256()
    for path in SEED_FILES:
        digest.update(path.read_bytes())
    digest.update((image_id(pg_image) or "").encode())
    return digest.hexdigest()[:16]


def ensure_seed(version=DEFAULT_PG):
    """Path of the pristine incident data directory, built once per generator/image."""
    # One seed directory per server version: building one removes the stale
    # seeds of its own version only.
    seeds = lab_root() / (".seed" if version == DEFAULT_PG else f".seed-{version}")
    pg_image = PG_SERVERS[version][0]
    final = seeds / seed_key(pg_image)
    if (final / "pgdata" / "PG_VERSION").exists():
        return final / "pgdata"
    seeds.mkdir(parents=True, exist_ok=True)
    # Several lab.py may run at once (parallel test sessions): one builds, the others wait.
    with open(seeds / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "pgdata" / "PG_VERSION").exists():
            for stale in seeds.iterdir():
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            build_seed(seeds, final, pg_image)
    return final / "pgdata"


def build_seed(seeds, final, pg_image=PG_IMAGE):
    work = Path(tempfile.mkdtemp(prefix="build-", dir=seeds))
    try:
        load_seed(work, final.name, pg_image)
        shutil.rmtree(work / "initdb")
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_seed(work, key, pg_image=PG_IMAGE):
    started = time.monotonic()
    initdb = work / "initdb"
    (work / "pgdata").mkdir()
    initdb.mkdir()
    with open(initdb / "10-moncabinet.sql", "wb") as out:
        subprocess.run([sys.executable, str(SEED_FILES[0])], stdout=out, check=True)
    shutil.copy(SEED_FILES[1], initdb / "20-qadhya.sql")
    name = f"qadhya-lab-seed-{key}"
    remove_container(name)
    docker("run", "-d", "--name", name,
           "-e", f"POSTGRES_USER={DB_USER}", "-e", f"POSTGRES_PASSWORD={DB_PASSWORD}",
           "-e", f"POSTGRES_DB={DATA_DB}",
           "-v", f"{work / 'pgdata'}:/var/lib/postgresql/data",
           "-v", f"{initdb}:/docker-entrypoint-initdb.d:ro", pg_image)
    try:
        wait_healthy(name, timeout=600)
        docker("exec", name, "psql", "-U", DB_USER, "-d", "postgres", "-c", "CHECKPOINT")
        docker("stop", "-t", "60", name)
        code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        if code != "0":
            raise LabError(f"seed postgres did not shut down cleanly (exit code {code})")
    finally:
        remove_container(name)
    log(f"built seed data directory in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------- instances


@dataclass
class Instance:
    name: str
    port: int
    mode: str = "mounted"
    pg_version: str = DEFAULT_PG

    @property
    def pg_image(self):
        return PG_SERVERS[self.pg_version][0]

    @property
    def prefix(self):
        return "qadhya" if self.name == DEFAULT_INSTANCE else f"qadhya-{self.name}"

    @property
    def state_dir(self):
        return lab_root() / self.name

    @property
    def env_file(self):
        return self.state_dir / "app" / ".env"

    @property
    def project(self):
        """Compose project name (mode compose): lower case, as Compose wants it."""
        return self.prefix.lower()

    @property
    def compose_file(self):
        return self.env_file.parent / COMPOSE_FILE

    def describe(self):
        state = self.state_dir
        return {
            **asdict(self),
            "db_container": f"{self.prefix}-postgres",
            "app_container": f"{self.prefix}-nextjs",
            "network": f"qadhya-lab-{self.name}",
            "state_dir": str(state),
            "env_file": str(self.env_file),
            "pgdata": str(state / "pgdata"),
            "backup_dir": str(state / "backups"),
            "health_url": f"http://127.0.0.1:{self.port}/api/health",
            "pg_image": self.pg_image,
            "db_user": DB_USER,
            "db_password": DB_PASSWORD,
            **({"compose_project": self.project, "compose_file": str(self.compose_file),
                "compose_service": APP_SERVICE} if self.mode == "compose" else {}),
        }

    def save(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "instance.json"
        path.write_text(json.dumps(self.describe(), indent=2) + "\n")


def known_instances():
    root = lab_root()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/instance.json"))


def load_instance(name):
    path = lab_root() / name / "instance.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        known = ", ".join(known_instances()) or "none"
        raise LabError(f"unknown instance '{name}'; known: {known} "
                       f"(create one with `lab.py up --instance {name} --port N`)") from None
    return Instance(data["name"], int(data["port"]), data.get("mode", "mounted"),
                    data.get("pg_version", DEFAULT_PG))


def claimed_ports(exclude):
    ports = set()
    for name in known_instances():
        if name != exclude:
            ports.add(load_instance(name).port)
    return ports


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: only a listener makes the port busy, not TIME_WAIT leftovers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(name):
    taken = claimed_ports(exclude=name)
    port = FIRST_EXTRA_PORT
    while port in taken or not port_free(port):
        port += 1
    return port


def check_port(inst):
    owner = next((n for n in known_instances()
                  if n != inst.name and load_instance(n).port == inst.port), None)
    if owner or not port_free(inst.port):
        by = f" (instance '{owner}')" if owner else ""
        raise LabError(f"port {inst.port} is already in use on 127.0.0.1{by}; choose another with --port")


def write_env_file(inst, db_name=INCIDENT_DB):
    """Atomic replace, mode 0600 from creation: the file holds a password."""
    path = inst.env_file
    path.parent.mkdir(parents=True, exist_ok=True)
    template = COMPOSE_ENV_TEMPLATE if inst.mode == "compose" else ENV_TEMPLATE
    content = template.format(name=inst.name, db_name=db_name, user=DB_USER, password=DB_PASSWORD)
    fd, tmp = tempfile.mkstemp(prefix=".env.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_pgdata(inst, seed):
    pgdata = inst.state_dir / "pgdata"
    shutil.rmtree(pgdata, ignore_errors=True)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cp -a keeps the container's postgres uid and modes, and is faster than copytree.
    subprocess.run(["cp", "-a", str(seed), str(pgdata)], check=True)


def reset_backups(inst):
    backups = inst.state_dir / "backups"
    shutil.rmtree(backups, ignore_errors=True)
    backups.mkdir(mode=0o700)
    os.chmod(backups, 0o700)


def ensure_network(inst):
    network = inst.describe()["network"]
    if docker("network", "inspect", network, check=False).returncode != 0:
        docker("network", "create", "--label", f"{LABEL}={inst.name}", network)


def write_compose_file(inst):
    info = inst.describe()
    content = COMPOSE_TEMPLATE.format(
        name=inst.name, project=inst.project, pg_image=inst.pg_image, app_image=APP_IMAGE, label=LABEL,
        db_container=info["db_container"], app_container=info["app_container"], user=DB_USER,
        password=DB_PASSWORD, data_db=DATA_DB, pgdata=info["pgdata"], port=inst.port,
        network=info["network"])
    inst.compose_file.parent.mkdir(parents=True, exist_ok=True)
    inst.compose_file.write_text(content)


def compose(inst, *args):
    """`docker compose` on the instance's project, as its operator would type it."""
    return docker("compose", "-p", inst.project, "-f", str(inst.compose_file),
                  "--project-directory", str(inst.compose_file.parent), *args)


def require_compose():
    if docker("compose", "version", check=False).returncode != 0:
        raise LabError("mode compose needs the Docker Compose v2 plugin (`docker compose`); "
                       "run .ci/bootstrap as root to install it")


def start_db(inst):
    if inst.mode == "compose":
        compose(inst, "up", "-d", DB_SERVICE)
        return
    info = inst.describe()
    docker("run", "-d", "--name", info["db_container"],
           "--network", info["network"], "--network-alias", "postgres",
           "--restart", "unless-stopped", "--label", f"{LABEL}={inst.name}",
           "-e", f"POSTGRES_USER={DB_USER}", "-e", f"POSTGRES_PASSWORD={DB_PASSWORD}",
           "-e", f"POSTGRES_DB={DATA_DB}",
           "-v", f"{info['pgdata']}:/var/lib/postgresql/data", inst.pg_image)


def app_config_args(inst):
    app_dir = inst.env_file.parent
    if inst.mode == "mounted":
        # The directory, not the file: editors and Ansible replace the file by
        # rename, which a single-file bind mount would never see.
        return ["-v", f"{app_dir}:/config:ro"]
    return ["--env-file", str(inst.env_file)]


def start_app(inst):
    if inst.mode == "compose":
        compose(inst, "up", "-d", "--force-recreate", APP_SERVICE)
        return
    info = inst.describe()
    # --init: tini forwards SIGTERM even before Python has installed its handler,
    # so `docker stop` is fast right after a start too.
    docker("run", "-d", "--init", "--name", info["app_container"],
           "--network", info["network"], "--network-alias", "app",
           "--restart", "unless-stopped", "--label", f"{LABEL}={inst.name}",
           "-p", f"127.0.0.1:{inst.port}:3000", *app_config_args(inst), APP_IMAGE)


def recreate_app(inst):
    if inst.mode != "compose":
        remove_container(inst.describe()["app_container"])
    start_app(inst)
    return wait_http(inst.describe()["health_url"])


def reset(inst):
    started = time.monotonic()
    info = inst.describe()
    remove_container(info["app_container"])
    remove_container(info["db_container"])
    check_port(inst)
    if inst.mode == "compose":
        require_compose()
    seed = ensure_seed(inst.pg_version)
    replace_pgdata(inst, seed)
    reset_backups(inst)
    write_env_file(inst)
    if inst.mode == "compose":
        write_compose_file(inst)
    else:
        inst.compose_file.unlink(missing_ok=True)
    inst.save()
    ensure_network(inst)
    start_db(inst)
    wait_healthy(info["db_container"])
    start_app(inst)
    code = wait_http(info["health_url"])
    log(f"instance '{inst.name}' in the incident state in {time.monotonic() - started:.1f}s "
        f"(app {info['app_container']} on port {inst.port}, mode {inst.mode}, "
        f"PostgreSQL {inst.pg_version}, /api/health {code})")


def down(inst_name):
    state = lab_root() / inst_name
    info = load_instance(inst_name).describe() if (state / "instance.json").exists() else None
    proc = docker("ps", "-aq", "--filter", f"label={LABEL}={inst_name}", check=False)
    ids = proc.stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    if info:
        docker("network", "rm", info["network"], check=False)
    shutil.rmtree(state, ignore_errors=True)
    log(f"instance '{inst_name}' removed")


# --------------------------------------------------------------------------- status


def psql(container, database, sql):
    proc = docker("exec", container, "psql", "-U", DB_USER, "-d", database, "-XAt", "-F", "\t",
                  "-v", "ON_ERROR_STOP=1", "-c", sql, check=False)
    if proc.returncode != 0:
        raise LabError(f"psql on {container}/{database} failed: {proc.stderr.strip()}")
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def database_counts(container):
    names = [row[0] for row in psql(container, "postgres",
                                    "SELECT datname FROM pg_database ORDER BY datname")]
    result = {}
    for name in names:
        if name.startswith("template"):
            result[name] = None
            continue
        result[name] = {table: int(count) for table, count in psql(container, name, COUNT_SQL)}
    return result


def env_value(path, key):
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and name.strip() == key:
            value = value.strip()
            if value[:1] in ("'", '"') and value[0] in value[1:]:
                return value[1:value.index(value[0], 1)]
            # dotenv: a blank then `#` starts a comment after an unquoted value
            return value.split(" #", 1)[0].split("\t#", 1)[0].strip()
    return None


def collect_status(inst):
    info = inst.describe()
    containers = {}
    for role in ("db_container", "app_container"):
        state = container_state(info[role])
        containers[info[role]] = ({"status": state[0], "health": state[1] or None}
                                  if state else {"status": "absent", "health": None})
    db_running = containers[info["db_container"]]["status"] == "running"
    return {
        "instance": inst.name,
        "mode": inst.mode,
        "containers": containers,
        "databases": database_counts(info["db_container"]) if db_running else {},
        "env_file": info["env_file"],
        "env_db_name": env_value(info["env_file"], "DB_NAME"),
        "health_url": info["health_url"],
        "health_http": http_status(info["health_url"]),
    }


def print_status(status):
    print(f"instance {status['instance']} (mode {status['mode']})")
    for name, state in status["containers"].items():
        print(f"  container {name:<28} {state['status']:<8} {state['health'] or '-'}")
    for db, tables in status["databases"].items():
        if tables is None:
            continue
        counts = ", ".join(f"{t}={n}" for t, n in tables.items()) or "(no tables)"
        print(f"  database  {db:<28} {counts}")
    print(f"  env file  {status['env_file']}: DB_NAME={status['env_db_name']}")
    print(f"  health    {status['health_url']} -> {status['health_http'] or 'no answer'}")


# --------------------------------------------------------------------------- commands


def cmd_build(args):
    require_engine()
    build_images(force=args.force, versions=[args.pg] if args.pg else list(PG_SERVERS))


def cmd_up(args):
    require_engine()
    existing = (lab_root() / args.instance / "instance.json").exists()
    previous = load_instance(args.instance) if existing else None
    pg_version = args.pg or (previous.pg_version if previous else DEFAULT_PG)
    build_images(versions=(pg_version,))
    port = args.port or (previous.port if previous else None)
    if port is None:
        port = DEFAULT_PORT if args.instance == DEFAULT_INSTANCE else pick_port(args.instance)
    mode = args.mode or (previous.mode if previous else "mounted")
    reset(Instance(args.instance, port, mode, pg_version))


def cmd_reset(args):
    inst = load_instance(args.instance)
    require_engine()
    if args.mode:
        inst.mode = args.mode
    if image_id(inst.pg_image) is None or image_id(APP_IMAGE) is None:
        raise LabError(f"lab images are missing; run `lab.py build --pg {inst.pg_version}` first")
    reset(inst)


def cmd_down(args):
    names = known_instances() if args.all else [args.instance]
    if not args.all:
        load_instance(args.instance)
    require_engine()
    for name in names:
        down(name)


def cmd_status(args):
    inst = load_instance(args.instance)
    require_engine()
    status = collect_status(inst)
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print_status(status)


def cmd_env(args):
    print(json.dumps(load_instance(args.instance).describe(), indent=2))


def cmd_recreate_app(args):
    inst = load_instance(args.instance)
    require_engine()
    if args.mode:
        inst.mode = args.mode
        inst.save()
    code = recreate_app(inst)
    log(f"app of instance '{inst.name}' recreated (mode {inst.mode}, /api/health {code})")


def instance_name(value):
    if not value or not all(c.isalnum() or c in "-_" for c in value) or value.startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid instance name {value!r} (letters, digits, - and _)")
    return value


def port_number(value):
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}")
    return port


def build_parser():
    parser = argparse.ArgumentParser(prog="lab.py", description="Qadhya incident lab")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    def with_instance(p):
        p.add_argument("--instance", type=instance_name, default=DEFAULT_INSTANCE)
        return p

    p = add("build", cmd_build, "build the base and lab images if absent")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.add_argument("--pg", choices=sorted(PG_SERVERS), help="only this server version's image (default: all)")
    p = with_instance(add("up", cmd_up, "create or reset an instance to the incident state"))
    p.add_argument("--port", type=port_number)
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--pg", choices=sorted(PG_SERVERS),
                   help=f"PostgreSQL server version (default: the instance's, else {DEFAULT_PG})")
    with_instance(add("reset", cmd_reset, "back to the incident state")).add_argument("--mode", choices=MODES)
    p = with_instance(add("down", cmd_down, "remove an instance (containers, network, state)"))
    p.add_argument("--all", action="store_true")
    with_instance(add("status", cmd_status, "containers, row counts, env, health")).add_argument(
        "--json", action="store_true")
    with_instance(add("env", cmd_env, "print the instance description (instance.json)"))
    with_instance(add("recreate-app", cmd_recreate_app,
                      "remove and run the app container again (takes the env file anew)")).add_argument(
        "--mode", choices=MODES)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as exc:
        log(str(exc))
        return 1
    except subprocess.CalledProcessError as exc:
        log(f"command failed ({exc.returncode}): {' '.join(map(str, exc.cmd))}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
