# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small Docker Engine API client (private).

HTTP over the engine's unix socket (or plain tcp) with the standard library
only: the Docker host needs no Docker SDK. It knows the transport (the
connection, the API version prefix, JSON bodies, HTTP errors, timeouts, the
multiplexed output stream of exec and logs) and the handful of calls the
``app_container`` logic (``_container``) makes; it decides nothing.

The docker CLI helpers of ``_docker`` stay apart: they stream ``pg_dump``
and ``psql`` through ``docker exec`` with secrets in the client's
environment, and honour the modules' ``docker_bin``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import struct
import tarfile
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# The newest API version this client is written for; older engines are
# talked to at their own version. 1.41 = Docker 20.10 (one network at create).
CLIENT_API_VERSION = (1, 41)


class DockerAPIError(Exception):
    """The Docker engine could not be reached or refused a request."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection whose transport is a unix domain socket."""

    def __init__(self, socket_path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def parse_docker_host(value):
    """Return ("unix", path) or ("tcp", host, port) for a DOCKER_HOST value."""
    value = (value or "").strip() or DEFAULT_DOCKER_HOST
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/"):
            raise DockerAPIError("docker_host %r: a unix socket path must be absolute (unix:///path)" % value)
        return ("unix", path)
    if value.startswith(("tcp://", "http://")):
        parts = urlsplit(value)
        if not parts.hostname:
            raise DockerAPIError("docker_host %r has no host name" % value)
        return ("tcp", parts.hostname, parts.port or 2375)
    raise DockerAPIError(
        "docker_host %r is not supported: use unix:///path/to/docker.sock (or tcp://host:port "
        "without TLS); run the module on the Docker host" % value
    )


def demux_stream(data):
    """Split Docker's multiplexed stdout/stderr stream (non-TTY) into two strings."""
    out, err = [], []
    pos = 0
    while pos + 8 <= len(data):
        kind, size = struct.unpack(">BxxxL", data[pos:pos + 8])
        if kind not in (0, 1, 2):
            # not a multiplexed stream (TTY container): everything is output
            return data.decode("utf-8", "replace"), ""
        chunk = data[pos + 8:pos + 8 + size]
        (err if kind == 2 else out).append(chunk)
        pos += 8 + size
    if pos < len(data) and not out and not err:
        return data.decode("utf-8", "replace"), ""
    return b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace")


class DockerAPI:
    """The handful of Engine API calls the module needs."""

    def __init__(self, docker_host=None, timeout=60):
        self.docker_host = (docker_host or "").strip() or DEFAULT_DOCKER_HOST
        self.target = parse_docker_host(self.docker_host)
        self.timeout = timeout
        self._prefix = None

    def _connection(self, timeout):
        if self.target[0] == "unix":
            return UnixHTTPConnection(self.target[1], timeout=timeout)
        return http.client.HTTPConnection(self.target[1], self.target[2], timeout=timeout)

    def _raw(self, method, path, query=None, body=None, timeout=None):
        if query:
            path = "%s?%s" % (path, urlencode(query))
        headers = {"Host": "docker"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout or self.timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        except (OSError, http.client.HTTPException) as exc:
            raise DockerAPIError(
                "cannot talk to the Docker engine at %s (%s: %s); check that dockerd runs and "
                "that this user may use its socket (or set DOCKER_HOST)"
                % (self.docker_host, type(exc).__name__, exc)
            ) from None
        finally:
            conn.close()

    @property
    def prefix(self):
        if self._prefix is None:
            status, data = self._raw("GET", "/version")
            version = CLIENT_API_VERSION
            if status == 200:
                try:
                    server = tuple(int(p) for p in json.loads(data)["ApiVersion"].split("."))
                    version = min(server, CLIENT_API_VERSION)
                except (ValueError, KeyError, TypeError):
                    pass
            self._prefix = "/v%d.%d" % version
        return self._prefix

    def call(self, method, path, query=None, body=None, ok=(200, 201, 204, 304), timeout=None):
        status, data = self._raw(method, self.prefix + path, query=query, body=body, timeout=timeout)
        if status not in ok:
            message = data.decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(message).get("message", message)
            raise DockerAPIError("%s %s: HTTP %d: %s" % (method, path.split("?")[0], status, message), status)
        return status, data

    def json(self, method, path, **kwargs):
        _status, data = self.call(method, path, **kwargs)
        return json.loads(data) if data.strip() else None

    # -- containers ---------------------------------------------------
    def inspect(self, name):
        """Container inspect dict, or None when it does not exist."""
        try:
            return self.json("GET", "/containers/%s/json" % quote(name, safe=""))
        except DockerAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def start(self, cid):
        self.call("POST", "/containers/%s/start" % cid)

    def stop(self, cid, timeout):
        self.call("POST", "/containers/%s/stop" % cid, query={"t": int(timeout)},
                  timeout=self.timeout + timeout)

    def restart(self, cid, timeout):
        self.call("POST", "/containers/%s/restart" % cid, query={"t": int(timeout)},
                  timeout=self.timeout + timeout)

    def rename(self, cid, new_name):
        self.call("POST", "/containers/%s/rename" % cid, query={"name": new_name})

    def remove(self, cid, force=False):
        # v=0: never delete volumes, named or anonymous
        self.call("DELETE", "/containers/%s" % cid, query={"force": int(bool(force)), "v": 0})

    def create(self, name, body):
        result = self.json("POST", "/containers/create", query={"name": name}, body=body)
        return result["Id"], result.get("Warnings") or []

    def connect_network(self, network, cid, endpoint):
        self.call("POST", "/networks/%s/connect" % quote(network, safe=""),
                  body={"Container": cid, "EndpointConfig": endpoint})

    def image(self, ref):
        try:
            return self.json("GET", "/images/%s/json" % quote(ref, safe=""))
        except DockerAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def logs(self, cid, tail=5):
        _status, data = self.call("GET", "/containers/%s/logs" % cid,
                                  query={"stdout": 1, "stderr": 1, "tail": tail})
        out, err = demux_stream(data)
        return (out + err).strip()

    def exec_run(self, cid, argv, timeout=30):
        """Run argv in a running container; return (exit code, stdout, stderr)."""
        created = self.json("POST", "/containers/%s/exec" % cid,
                            body={"AttachStdout": True, "AttachStderr": True, "Cmd": list(argv)})
        exec_id = created["Id"]
        _status, data = self.call("POST", "/exec/%s/start" % exec_id,
                                  body={"Detach": False, "Tty": False}, timeout=timeout)
        out, err = demux_stream(data)
        info = self.json("GET", "/exec/%s/json" % exec_id)
        return info.get("ExitCode"), out, err

    def read_file(self, cid, path):
        """Read one file from the container's filesystem (mounts included)."""
        _status, data = self.call("GET", "/containers/%s/archive" % cid, query={"path": path})
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    return tar.extractfile(member).read().decode("utf-8", "replace")
        raise DockerAPIError("%s in the container is not a regular file" % path)
