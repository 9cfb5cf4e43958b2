"""Real faults for the integration tests: a Docker Engine that refuses one call,
watchers that strike when the run's journal reaches a step or a file being
written reaches a size, and snapshots of every table's rows to prove that
nothing was lost.

Nothing here replaces a component by a fake: the proxy forwards every other
call to the real engine, and the faults are done to the real lab.
"""

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

from labkit import docker, host_vars, wait_for, write_inventory

ENGINE_SOCKET = "/var/run/docker.sock"


class DockerFaultProxy:
    """A unix socket in front of the Docker Engine that answers 500 to the
    first `times` requests matching `method` ("*": any) and the `path` regex,
    and forwards everything else (hijacked exec streams included). With
    `DockerFaultProxy(path, "*", "", times=math.inf)` the engine answers
    nothing but errors, as a hung or broken dockerd would, while the real one
    goes on serving everybody else.

    Point DOCKER_HOST at `self.url` for the process under test.
    """

    def __init__(self, path, method, pattern, times=1):
        self.path = str(path)
        self.method = method
        self.pattern = re.compile(pattern)
        self.left = times
        self.hits = []
        self.lock = threading.Lock()
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "unix://" + self.path

    def close(self):
        self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _strike(self, method, target):
        with self.lock:
            if self.left > 0 and self.method in ("*", method) and self.pattern.search(target):
                self.left -= 1
                self.hits.append("%s %s" % (method, target))
                return True
        return False

    def _handle(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target = request_line.split(" ")[:2]
        if self._strike(method, target):
            body = json.dumps({"message": "injected fault: the engine refused %s %s" % (method, target)})
            client.sendall(("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                            "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
            client.close()
            return
        headers, rest = head.split(b"\r\n\r\n", 1)
        if b"upgrade:" not in headers.lower():
            # One request per upstream connection: the proxy never has to parse a response.
            lines = [line for line in headers.split(b"\r\n") if not line.lower().startswith(b"connection:")]
            headers = b"\r\n".join(lines + [b"Connection: close"])
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(ENGINE_SOCKET)
        upstream.sendall(headers + b"\r\n\r\n" + rest)
        threads = [threading.Thread(target=_pipe, args=(client, upstream), daemon=True),
                   threading.Thread(target=_pipe, args=(upstream, client), daemon=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client.close()
        upstream.close()


def _pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class _Watcher:
    """Run `action()` once, in a thread, as soon as `_ready()` (polled every 5 ms) is true."""

    def __init__(self, action, timeout):
        self.action = action
        self.deadline = time.monotonic() + timeout
        self.fired = threading.Event()
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _ready(self):
        raise NotImplementedError

    def _watch(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self._ready():
                try:
                    self.action()
                except Exception as exc:  # reported by the test
                    self.error = exc
                self.fired.set()
                return
            time.sleep(0.005)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


class JournalWatcher(_Watcher):
    """Run `action()` once the newest journal in `journal_dir` holds an entry
    whose step is `step` (the `occurrence`-th such entry). The modules write
    an entry just before making the change it names, so the action lands
    between that change and the next step of the run."""

    def __init__(self, journal_dir, step, action, occurrence=1, timeout=600):
        self.dir = Path(journal_dir)
        self.step = step
        self.occurrence = occurrence
        super().__init__(action, timeout)

    def _entries(self):
        journals = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        if not journals:
            return []
        try:
            return json.loads(journals[-1].read_text()).get("entries") or []
        except ValueError:
            return []  # caught between two writes: the rename is atomic, but be safe

    def _ready(self):
        return sum(1 for e in self._entries() if e.get("step") == self.step) >= self.occurrence


class PathWatcher(_Watcher):
    """Run `action()` once a file matching `pattern` (a glob) in `directory` holds at
    least `min_bytes`: a strike while a dump is being written, for example. The
    files seen are kept in `seen`."""

    def __init__(self, directory, pattern, action, min_bytes=1, timeout=600):
        self.dir = Path(directory)
        self.pattern = pattern
        self.min_bytes = min_bytes
        self.seen = []
        super().__init__(action, timeout)

    def _ready(self):
        for path in self.dir.glob(self.pattern) if self.dir.is_dir() else []:
            with contextlib.suppress(OSError):
                if path.stat().st_size >= self.min_bytes:
                    self.seen.append(path)
        return bool(self.seen)


class DatabaseWatcher(_Watcher):
    """Run `action()` once the lab instance `inst` has a database whose name is LIKE
    `like` and which carries a comment (the mark a restore check sets as soon as it
    has created its scratch database); the names seen are kept in `seen`. One
    connection of its own to the server, polled every 5 ms."""

    def __init__(self, inst, like, action, timeout=600):
        import psycopg2  # the tests' venv has it, as the modules need it

        address = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                         inst.db).stdout.split()[0]
        self.conn = psycopg2.connect(host=address, user=inst.info["db_user"], dbname="postgres",
                                     password=inst.info["db_password"], application_name="faultkit watcher")
        self.conn.autocommit = True
        self.like = like
        self.seen = []
        super().__init__(action, timeout)

    def _ready(self):
        with self.conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s "
                        "AND shobj_description(oid, 'pg_database') IS NOT NULL", (self.like,))
            self.seen = [row[0] for row in cur.fetchall()]
        return bool(self.seen)

    def close(self):
        super().close()
        self.conn.close()


def descendants(pid):
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        todo.extend(children)
    return found


def kill_tree(pid):
    """SIGKILL `pid` and every process below it at once, as a power cut of a
    Docker host that is also the controller would: Ansible's workers run in
    sessions of their own, so killing the playbook's process group leaves the
    module running; this kills the module (and its docker exec clients) too."""
    below = descendants(pid)
    for each in [pid, *below]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGSTOP)  # none of them reacts to another's death first
    for each in [pid, *descendants(pid), *below]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def repoint(lab, source):
    """The app (mounted env file) pointed at its data `source` and healthy on it."""
    lab.set_env("DB_NAME", source)
    docker("restart", "-t", "2", lab.app)
    assert wait_for(lambda: lab.health()[0] == 200, timeout=30), lab.health()


def repointed_case(lab, work, source, **host_extra):
    """The lab instance reset to the incident state (mounted), the app then
    repointed at its data `source` and healthy, so that the switch is the
    only change of a run, and an inventory in `work` (no migrations)."""
    lab.reset("--mode", "mounted")
    (work / "migrations").mkdir()
    hosts = {"lab1": host_vars(lab.info, work, dbops_migrations_dir=str(work / "migrations"), **host_extra)}
    repoint(lab, source)
    return dict(inst=lab, work=work, backups=work / "backups",
                inventory=write_inventory(work / "inventory.json", hosts))


TABLES_SQL = (
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
)


def snapshot(inst, database):
    """{table: [rows, content checksum]} of every table of `database`: a hash
    aggregate of each row's text, independent of the physical order."""
    tables = [row[0] for row in inst.psql(database, TABLES_SQL)]
    if not tables:
        return {}
    query = " UNION ALL ".join(
        "SELECT %s, count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM %s t"
        % ("'" + name.replace("'", "''") + "'", name) for name in tables)
    return {row[0]: [int(row[1]), row[2]] for row in inst.psql(database, query)}


def blocked_databases(inst):
    return [row[0] for row in inst.psql("postgres", "SELECT datname FROM pg_database WHERE NOT datallowconn "
                                                    "AND datname NOT IN ('template0')")]
