"""Lab stand-in for the Qadhya Next.js app.

Settings are read once at start, like the real app: from /config/.env when the
host directory holding the env file is bind-mounted at /config ("mounted"
mode), else from the process environment ("created" mode, `docker run
--env-file`). A changed env file therefore needs a restart (mounted) or a
recreation (created) to take effect, exactly as in production.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

ENV_FILE = "/config/.env"
# LAB_FAIL_ON_DB is a fault switch for rollback tests: the app refuses to be
# healthy on that database name, like an app with a second setting that still
# names the old database.
KEYS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "LAB_FAIL_ON_DB")
DASHBOARD_ERROR = "Impossible de charger les métriques. Vérifiez la connexion à la base de données."


def parse_env_file(path):
    values = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key] = value
    return values


def load_settings():
    source = parse_env_file(ENV_FILE) if os.path.exists(ENV_FILE) else os.environ
    settings = {key: source.get(key, "") for key in KEYS}
    settings["source"] = ENV_FILE if source is not os.environ else "environment"
    return settings


SETTINGS = {}


def health():
    name = SETTINGS["DB_NAME"]
    if name and name == SETTINGS.get("LAB_FAIL_ON_DB"):
        return 503, {"status": "error", "database": name, "error": DASHBOARD_ERROR,
                     "detail": "LAB_FAIL_ON_DB names this database"}
    try:
        conn = psycopg2.connect(
            host=SETTINGS["DB_HOST"],
            port=SETTINGS["DB_PORT"] or "5432",
            dbname=name,
            user=SETTINGS["DB_USER"],
            password=SETTINGS["DB_PASSWORD"],
            connect_timeout=2,
            application_name="qadhya-nextjs",
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM knowledge_base")
                documents = cur.fetchone()[0]
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return 503, {"status": "error", "database": name, "error": DASHBOARD_ERROR,
                     "detail": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)}
    if documents <= 0:
        return 503, {"status": "error", "database": name, "error": DASHBOARD_ERROR,
                     "detail": "knowledge_base is empty"}
    return 200, {"status": "ok", "database": name, "documents": documents}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] == "/api/health":
            code, body = health()
        elif self.path == "/":
            code, body = 200, {"app": "qadhya-lab", "database": SETTINGS["DB_NAME"],
                               "settings_from": SETTINGS["source"]}
        else:
            code, body = 404, {"error": "not found"}
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        # The healthcheck polls every second; only log what is not a health probe.
        if "/api/health" not in self.path:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")


def main():
    # As PID 1 (no --init) the default SIGTERM action is "ignore": without this
    # handler `docker stop` would wait its full timeout before SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    SETTINGS.update(load_settings())
    server = ThreadingHTTPServer(("0.0.0.0", 3000), Handler)
    server.daemon_threads = True
    print(f"qadhya-lab app on :3000, DB_NAME={SETTINGS['DB_NAME']} (from {SETTINGS['source']})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
