# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the Engine API transport: a real unix socket served by a fake engine.

The client's own code runs unchanged (its connection, its requests, its
parsing); only the engine on the other end of the socket is pretend.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socketserver
import struct
import tarfile
import tempfile
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _engine_api as ea


def frame(kind, data):
    return struct.pack(">BxxxL", kind, len(data)) + data


class Engine:
    """Routes (method, path without the version prefix) to (status, body); records requests."""

    def __init__(self, api_version="1.45"):
        self.api_version = api_version
        self.requests = []
        self.routes = {}

    def answer(self, method, path, status=200, body=b""):
        self.routes[(method, path)] = (status, body)

    def handle(self, method, raw_path, headers, body):
        parts = urlsplit(raw_path)
        self.requests.append(dict(method=method, path=parts.path, query=parse_qs(parts.query),
                                  headers=headers, body=body))
        if parts.path == "/version":
            return 200, json.dumps({"ApiVersion": self.api_version}).encode()
        path = parts.path
        if path.startswith("/v"):
            path = "/" + path.split("/", 2)[2]
        return self.routes.get((method, path), (404, b'{"message": "page not found"}'))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, data = self.server.engine.handle(self.command, self.path, dict(self.headers), body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # the names http.server dispatches to
    do_GET = do_POST = do_DELETE = _serve

    def address_string(self):
        return "unix"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Quiet: the tests read the recorded requests instead."""


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine():
    # a short directory: a unix socket path is limited to about 100 bytes
    folder = tempfile.mkdtemp(prefix="dbops-engine-", dir="/tmp")
    path = os.path.join(folder, "docker.sock")
    fake = Engine()
    server = UnixServer(path, Handler)
    server.engine = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.host = "unix://" + path
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def test_parse_docker_host():
    assert ea.parse_docker_host(None) == ("unix", "/var/run/docker.sock")
    assert ea.parse_docker_host("unix:///run/user/1000/docker.sock") == ("unix", "/run/user/1000/docker.sock")
    assert ea.parse_docker_host("tcp://10.0.0.2:2375") == ("tcp", "10.0.0.2", 2375)
    assert ea.parse_docker_host("tcp://docker") == ("tcp", "docker", 2375)
    with pytest.raises(ea.DockerAPIError, match="not supported"):
        ea.parse_docker_host("ssh://host")
    with pytest.raises(ea.DockerAPIError, match="must be absolute"):
        ea.parse_docker_host("unix://run/docker.sock")


def test_demux_stream():
    data = frame(1, b"out") + frame(2, b"err") + frame(1, b"more")
    assert ea.demux_stream(data) == ("outmore", "err")
    assert ea.demux_stream(b"plain tty text") == ("plain tty text", "")
    assert ea.demux_stream(b"") == ("", "")


@pytest.mark.parametrize("server, prefix", [("1.45", "/v1.41"), ("1.40", "/v1.40"), ("junk", "/v1.41")])
def test_version_prefix_is_the_older_of_client_and_engine(engine, server, prefix):
    engine.api_version = server
    engine.answer("GET", "/containers/app/json", body=b'{"Id": "abc"}')
    api = ea.DockerAPI(engine.host)
    assert api.inspect("app") == {"Id": "abc"}
    assert api.inspect("app") == {"Id": "abc"}
    paths = [r["path"] for r in engine.requests]
    # negotiated once, then every call carries the prefix
    assert paths == ["/version", prefix + "/containers/app/json", prefix + "/containers/app/json"]


def test_inspect_of_a_missing_container_is_none_and_names_are_quoted(engine):
    api = ea.DockerAPI(engine.host)
    assert api.inspect("no/such") is None
    assert engine.requests[-1]["path"].endswith("/containers/no%2Fsuch/json")
    assert api.image("gone:1") is None


def test_an_engine_refusal_is_one_line_with_its_status(engine):
    engine.answer("POST", "/containers/app/start", status=500,
                  body=b'{"message": "driver failed programming external connectivity"}')
    api = ea.DockerAPI(engine.host)
    with pytest.raises(ea.DockerAPIError) as caught:
        api.start("app")
    assert caught.value.status == 500
    assert str(caught.value) == ("POST /containers/app/start: HTTP 500: "
                                 "driver failed programming external connectivity")
    engine.answer("POST", "/containers/app/start", status=409, body=b"not json")
    with pytest.raises(ea.DockerAPIError, match="HTTP 409: not json"):
        api.start("app")


def test_an_unreachable_engine_says_where_and_what_to_check(tmp_path):
    api = ea.DockerAPI("unix://%s/none.sock" % tmp_path)
    expected = r"cannot talk to the Docker engine at unix://.*none.sock \(FileNotFoundError.*DOCKER_HOST\)"
    with pytest.raises(ea.DockerAPIError, match=expected):
        api.inspect("app")


def test_create_sends_json_and_returns_id_and_warnings(engine):
    engine.answer("POST", "/containers/create", status=201,
                  body=b'{"Id": "new", "Warnings": ["memory limit ignored"]}')
    api = ea.DockerAPI(engine.host)
    assert api.create("app", {"Image": "img", "Env": ["A=1"]}) == ("new", ["memory limit ignored"])
    request = engine.requests[-1]
    assert request["query"] == {"name": ["app"]}
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"Image": "img", "Env": ["A=1"]}


def test_stop_passes_the_grace_period_and_waits_that_much_longer(engine, monkeypatch):
    engine.answer("POST", "/containers/abc/stop", status=204)
    engine.answer("DELETE", "/containers/abc", status=204)
    seen = []
    real = ea.UnixHTTPConnection

    def spy(path, timeout):
        seen.append(timeout)
        return real(path, timeout=timeout)

    monkeypatch.setattr(ea, "UnixHTTPConnection", spy)
    api = ea.DockerAPI(engine.host, timeout=7)
    api.stop("abc", 30)
    api.remove("abc")
    assert engine.requests[-2]["query"] == {"t": ["30"]}
    # the socket waits for the engine's own grace period on top of the usual timeout
    assert seen[-2:] == [37, 7]
    # volumes are never removed with the container
    assert engine.requests[-1]["query"] == {"force": ["0"], "v": ["0"]}


def test_exec_run_splits_the_stream_and_reads_the_exit_code(engine):
    engine.answer("POST", "/containers/abc/exec", status=201, body=b'{"Id": "e1"}')
    engine.answer("POST", "/exec/e1/start", body=frame(1, b"DB_NAME=x\n") + frame(2, b"warn\n"))
    engine.answer("GET", "/exec/e1/json", body=b'{"ExitCode": 3}')
    api = ea.DockerAPI(engine.host)
    assert api.exec_run("abc", ["cat", "--", "/app/.env"]) == (3, "DB_NAME=x\n", "warn\n")
    assert json.loads(engine.requests[1]["body"])["Cmd"] == ["cat", "--", "/app/.env"]


def test_logs_join_both_streams(engine):
    engine.answer("GET", "/containers/abc/logs", body=frame(1, b"listening\n") + frame(2, b"boom\n"))
    api = ea.DockerAPI(engine.host)
    assert api.logs("abc", tail=2) == "listening\nboom"
    assert engine.requests[-1]["query"]["tail"] == ["2"]


def test_read_file_unpacks_the_archive(engine):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"DB_NAME=moncabinet\n"
        info = tarfile.TarInfo(".env")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    engine.answer("GET", "/containers/abc/archive", body=buf.getvalue())
    dirbuf = io.BytesIO()
    with tarfile.open(fileobj=dirbuf, mode="w") as tar:
        info = tarfile.TarInfo("app")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    api = ea.DockerAPI(engine.host)
    assert api.read_file("abc", "/app/.env") == "DB_NAME=moncabinet\n"
    engine.answer("GET", "/containers/abc/archive", body=dirbuf.getvalue())
    with pytest.raises(ea.DockerAPIError, match="not a regular file"):
        api.read_file("abc", "/app")
