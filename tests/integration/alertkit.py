"""A receiver on 127.0.0.1 standing for both Sentry and a chat webhook.

sentry-sdk posts envelopes to /api/<project>/envelope/ (gzip-compressed,
one JSON header line then item header/payload line pairs); a webhook gets a
plain JSON POST on any other path. Every request is kept, decoded, for the
test to assert on.
"""

import contextlib
import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _decode(body, encoding):
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def parse_envelope(raw):
    """The items of a Sentry envelope: [(item header, payload as JSON or text)]."""
    lines = raw.decode("utf-8").split("\n")
    items = []
    i = 1  # line 0 is the envelope header
    while i + 1 < len(lines) and lines[i].strip():
        header = json.loads(lines[i])
        payload = lines[i + 1]
        with contextlib.suppress(ValueError):  # an attachment is not JSON
            payload = json.loads(payload)
        items.append((header, payload))
        i += 2
    return items


class Receiver:
    """Start with `with Receiver() as rx:`; rx.port, rx.requests, rx.events(), rx.webhooks()."""

    def __init__(self, status=200):
        self.status = status
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = _decode(self.rfile.read(length), self.headers.get("Content-Encoding"))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "raw": raw.decode("utf-8", "replace")})
                body = b'{"id": "0"}' if self.path.endswith("/envelope/") else b"ok"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest's output clean
                del args

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def dsn(self, key="0123456789abcdef0123456789abcdef"):
        return "http://%s@127.0.0.1:%d/1" % (key, self.port)

    def webhook_url(self, token="hooks/T000/B000/XXXXsecrettoken"):
        return "http://127.0.0.1:%d/%s" % (self.port, token)

    def events(self):
        """The Sentry events received (the payloads of `event` items)."""
        return [payload for req in self.requests if req["path"].endswith("/envelope/")
                for header, payload in parse_envelope(req["raw"].encode()) if header.get("type") == "event"]

    def webhooks(self):
        return [json.loads(req["raw"]) for req in self.requests if not req["path"].endswith("/envelope/")]
