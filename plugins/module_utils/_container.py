# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stop, start, restart or recreate the app container (private).

The logic of the ``app_container`` module, over the Engine API client of
``_engine_api`` (injected, so it is tested with a fake engine):

* decide whether the container's running process sees the wanted env
  values (env file bind-mounted into the container, or env fixed in
  ``Config.Env`` at creation);
* restart it, or recreate it with its exact configuration and only env
  values changed, keeping the previous container until the new one is
  healthy; a container managed by Docker Compose (its labels say so, see
  ``_compose``) is recreated by Compose itself, that service only;
* wait for Docker's health status and an HTTP 200 from the health URL;
* prove the result: effective env, and ``docker inspect`` before/after.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import time
from datetime import datetime, timezone

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.urls import open_url

from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile
from ansible_collections.qadhya.dbops.plugins.module_utils._compose import (
    compose_dry_run_others,
    compose_recreate_argv,
    compose_service,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._engine_api import DockerAPIError

try:
    from urllib.error import HTTPError
except ImportError:  # pragma: no cover
    HTTPError = None

PREVIOUS_SUFFIX = ".dbops-previous"
POLL_INTERVAL = 0.05
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

# inspect paths that may differ between a container and its recreation
ALLOWED_DIFF = ("Id", "Created", "Config.Env")


class ContainerError(Exception):
    """The module must fail; ``str(exc)`` is the one-line reason."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------
# Pure helpers (unit tested without Docker)
# --------------------------------------------------------------------------


def env_list_to_dict(env_list):
    result = {}
    for item in env_list or []:
        key, sep, value = item.partition("=")
        result[key] = value if sep else None
    return result


def merge_env(env_list, wanted):
    """Config.Env with the wanted values replaced in place or appended."""
    env_list = list(env_list or [])
    seen = set()
    out = []
    for item in env_list:
        key = item.partition("=")[0]
        if key in wanted:
            if key in seen:
                continue
            seen.add(key)
            out.append("%s=%s" % (key, wanted[key]))
        else:
            out.append(item)
    for key, value in wanted.items():
        if key not in seen:
            out.append("%s=%s" % (key, value))
    return out


def env_mismatches(actual, wanted):
    """Keys of ``wanted`` whose value differs in ``actual`` (a dict)."""
    return [key for key, value in wanted.items() if actual.get(key) != value]


def describe_mismatch(actual, wanted, keys):
    parts = []
    for key in keys:
        have = actual.get(key)
        # What is there first, then what is wanted: "DB_NAME=qadhya instead of moncabinet".
        parts.append("%s=%s instead of %s" % (
            key,
            "<unset>" if have is None else envfile.mask_value(key, have),
            envfile.mask_value(key, wanted[key]),
        ))
    return ", ".join(parts)


def masked(env):
    return {key: envfile.mask_value(key, value) for key, value in env.items()}


def env_file_mount(info, env_file):
    """Container path of ``env_file`` when a bind mount covers it, else None."""
    if not env_file:
        return None
    candidates = {os.path.normpath(env_file), os.path.realpath(env_file)}
    best = None
    for mount in info.get("Mounts") or []:
        if mount.get("Type") != "bind":
            continue
        source = os.path.normpath(mount.get("Source") or "")
        dest = mount.get("Destination") or ""
        for path in candidates:
            if path == source:
                rel = ""
            elif path.startswith(source.rstrip("/") + "/"):
                rel = path[len(source.rstrip("/")) + 1:]
            else:
                continue
            # the most specific (longest) mount wins, as in the container
            if best is None or len(source) > best[0]:
                best = (len(source), dest.rstrip("/") + "/" + rel if rel else dest)
    return best[1] if best else None


def short_id(cid):
    return (cid or "")[:12]


def is_auto_hostname(info):
    hostname = (info.get("Config") or {}).get("Hostname") or ""
    return hostname == short_id(info.get("Id"))


def anonymous_volumes(info):
    """Anonymous volumes of the container: (name, destination) pairs."""
    host_config = info.get("HostConfig") or {}
    named = set()
    for bind in host_config.get("Binds") or []:
        named.add(bind.split(":", 1)[0])
    for mount in host_config.get("Mounts") or []:
        if mount.get("Source"):
            named.add(mount["Source"])
    result = []
    for mount in info.get("Mounts") or []:
        name = mount.get("Name") or ""
        if mount.get("Type") == "volume" and HEX64_RE.match(name) and name not in named:
            result.append((name, mount.get("Destination")))
    return result


def primary_network(info):
    mode = (info.get("HostConfig") or {}).get("NetworkMode") or "default"
    return "bridge" if mode == "default" else mode


def _endpoint_config(endpoint, cid):
    aliases = [a for a in (endpoint.get("Aliases") or []) if a != short_id(cid)]
    config = {}
    # as they are, {} included: `docker network connect` stores an empty IPAMConfig
    for key in ("IPAMConfig", "Links", "DriverOpts"):
        if endpoint.get(key) is not None:
            config[key] = endpoint[key]
    if aliases:
        config["Aliases"] = aliases
    return config


def _create_links(links, own_name):
    """HostConfig.Links as inspect shows them ("/db:/app/db") → create form ("db:db")."""
    out = []
    for link in links or []:
        src, _sep, alias = link.partition(":")
        src = src.lstrip("/")
        prefix = "/" + own_name.lstrip("/") + "/"
        if alias.startswith(prefix):
            alias = alias[len(prefix):]
        out.append("%s:%s" % (src, alias.lstrip("/") or src))
    return out


def build_create_body(info, wanted_env):
    """Body of POST /containers/create reproducing ``info`` with new env values.

    Returns (body, extra_networks) where extra_networks maps the other
    networks' names to the EndpointConfig to connect after creation (the
    1.41 API takes a single network at create).
    """
    config = copy.deepcopy(info.get("Config") or {})
    host_config = copy.deepcopy(info.get("HostConfig") or {})
    body = config
    body["Env"] = merge_env(config.get("Env"), wanted_env)
    if is_auto_hostname(info):
        # generated from the old id: let Docker generate the new one
        body.pop("Hostname", None)
    if host_config.get("Links"):
        host_config["Links"] = _create_links(host_config["Links"], info.get("Name") or "")
    body["HostConfig"] = host_config
    networks = ((info.get("NetworkSettings") or {}).get("Networks")) or {}
    primary = primary_network(info)
    extra = {}
    if primary in networks and not primary.startswith("container:") and primary not in ("host", "none"):
        body["NetworkingConfig"] = {
            "EndpointsConfig": {primary: _endpoint_config(networks[primary], info.get("Id"))}
        }
    for name, endpoint in sorted(networks.items()):
        if name != primary:
            extra[name] = _endpoint_config(endpoint, info.get("Id"))
    return body, extra


_RUNTIME_TOP = (
    "State", "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath", "RestartCount",
    "GraphDriver", "SizeRw", "SizeRootFs", "ExecIDs", "NetworkSettings", "Mounts",
)


def normalize_inspect(info, anonymous_ok=False):
    """The part of ``docker inspect`` that is configuration, in comparable form."""
    doc = {key: copy.deepcopy(value) for key, value in info.items() if key not in _RUNTIME_TOP}
    config = doc.get("Config") or {}
    if is_auto_hostname(info):
        config["Hostname"] = "<auto>"
    doc["Config"] = config
    networks = {}
    for name, endpoint in (((info.get("NetworkSettings") or {}).get("Networks")) or {}).items():
        networks[name] = {
            "Aliases": sorted(_endpoint_config(endpoint, info.get("Id")).get("Aliases") or []),
            "IPAMConfig": endpoint.get("IPAMConfig") or None,
            "Links": endpoint.get("Links") or None,
            "DriverOpts": endpoint.get("DriverOpts") or None,
        }
    doc["Networks"] = networks
    mounts = {}
    for mount in info.get("Mounts") or []:
        item = dict(mount)
        if anonymous_ok and mount.get("Type") == "volume" and HEX64_RE.match(mount.get("Name") or ""):
            item["Name"] = "<anonymous>"
            item["Source"] = "<anonymous>"
        mounts[mount.get("Destination")] = item
    doc["Mounts"] = mounts
    return doc


def config_diff(old, new, path=""):
    """Dotted paths where two normalized documents differ (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(set(old) | set(new), key=str):
            sub = "%s.%s" % (path, key) if path else str(key)
            if key not in old or key not in new:
                # a key present on one side only with an empty value is no difference
                if (old.get(key) in (None, "", [], {}) and new.get(key) in (None, "", [], {})):
                    continue
                paths.append(sub)
            else:
                paths.extend(config_diff(old[key], new[key], sub))
        return paths
    if old in (None, [], {}) and new in (None, [], {}):
        return []
    return [] if old == new else [path]


def inspect_diff(old_info, new_info, anonymous_ok=False):
    """(all differing paths, the unexpected ones)."""
    paths = config_diff(normalize_inspect(old_info, anonymous_ok), normalize_inspect(new_info, anonymous_ok))
    unexpected = [p for p in paths if p not in ALLOWED_DIFF]
    return paths, unexpected


def parse_docker_time(value):
    """Seconds since the epoch of a Docker RFC 3339 timestamp (nanoseconds allowed)."""
    if not value or value.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    base = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = match.group(3)
    offset = 0
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    seconds = base.replace(tzinfo=timezone.utc).timestamp() - offset  # noqa: UP017 - targets may run Python < 3.11
    if match.group(2):
        seconds += float("0" + match.group(2))
    return seconds


def last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def health_log_tail(info):
    health = (info.get("State") or {}).get("Health") or {}
    log = health.get("Log") or []
    if not log:
        return ""
    last = log[-1]
    lines = [line.strip() for line in (last.get("Output") or "").splitlines() if line.strip()]
    # the last line of a traceback or of curl/wget output says what went wrong
    text = lines[-1] if lines else ""
    return "exit %s: %s" % (last.get("ExitCode"), text[-300:])


def _error_summary(body):
    """A short, secret-free description of a failing health answer."""
    if not isinstance(body, dict):
        return json.dumps(body)[:200]
    keep = {key: body[key] for key in ("status", "database", "documents", "error", "detail") if key in body}
    return json.dumps(keep, ensure_ascii=False)[:300]


def summarize_body(body):
    """Only the harmless keys of a health JSON body."""
    if not isinstance(body, dict):
        return None
    return {key: body[key] for key in ("status", "database", "documents") if key in body}


# --------------------------------------------------------------------------
# What the modules that drive the app container share (app_container, app_switch)
# --------------------------------------------------------------------------


def container_argument_spec():
    """How the app is started and judged ready: the options app_container and app_switch share."""
    return dict(
        strategy=dict(type="str", default="auto", choices=["auto", "restart", "recreate"]),
        health_url=dict(type="str"),
        health_timeout=dict(type="int", default=60),
        wait_healthy=dict(type="bool", default=True),
        stop_timeout=dict(type="int", default=10),
        validate_certs=dict(type="bool", default=True),
        allow_anonymous_volumes=dict(type="bool", default=False),
        docker_host=dict(type="str", fallback=(env_fallback, ["DOCKER_HOST"])),
    )


class HealthProbe:
    """GET the health URL: (status or None, body bytes, error text)."""

    def __init__(self, validate_certs):
        self.validate_certs = validate_certs

    def __call__(self, url, timeout):
        try:
            resp = open_url(url, method="GET", timeout=timeout, validate_certs=self.validate_certs,
                            follow_redirects="safe")
            return resp.getcode(), resp.read(65536), ""
        except HTTPError as exc:
            body = b""
            try:
                body = exc.read(65536)
            except Exception:  # pylint: disable=broad-except
                body = b""
            return exc.code, body, ""
        except Exception as exc:  # pylint: disable=broad-except
            # refused, reset, timeout, TLS: "no answer yet" while the app starts
            return None, b"", "%s: %s" % (type(exc).__name__, to_native(exc))


class DockerCLI:
    """Run the docker CLI (only Compose needs it) against the module's engine."""

    def __init__(self, module, docker_host):
        self.module = module
        self.environ = {"DOCKER_HOST": docker_host} if docker_host else {}

    def __call__(self, argv):
        docker = self.module.get_bin_path("docker")
        if not docker:
            return 127, "", "the docker CLI is not installed on the Docker host"
        return self.module.run_command([docker, *argv], environ_update=self.environ)


# --------------------------------------------------------------------------
# The module's logic
# --------------------------------------------------------------------------


class AppContainer:
    """Plans and performs one app_container call.

    ``http_get(url, timeout)`` returns (status or None, body bytes, error text);
    it is injected so the logic can be tested without a network.
    """

    def __init__(self, params, api, http_get, check_mode=False, clock=time.monotonic, sleep=time.sleep,
                 journal=None, docker_cli=None):
        self.params = params
        # docker_cli(argv) runs the docker CLI (Compose) and returns (rc, stdout, stderr).
        self.docker_cli = docker_cli
        # journal(step, **details) records each change just before it is made.
        self.journal = journal or (lambda step, **details: None)
        self.api = api
        self.http_get = http_get
        self.check_mode = check_mode
        self.clock = clock
        self.sleep = sleep
        self.name = params["name"]
        # Set by the switch (app_switch): Docker's own health is awaited after its window closes
        # (wait_docker_health), and the stop's Compose check was made before the window opened.
        self.defer_docker_health = False
        self.compose_checked = False
        self._deadline = None
        self._begin = None
        self.wanted = {str(k): "" if v is None else str(v) for k, v in (params.get("env") or {}).items()}
        self.result = dict(
            changed=False, strategy="none", action="none", health_status=None, http_status=None,
            effective_env={}, elapsed_s=None, previous_config_diff=[], container_id=None,
            env_mode=None, health_body=None, timings={},
        )

    # -- helpers --------------------------------------------------------
    def _mark(self, key, since):
        self.result["timings"][key] = round(self.clock() - since, 3)

    def _inspect(self, name=None):
        info = self.api.inspect(name or self.name)
        if info is None:
            raise ContainerError(
                "container %r disappeared while the module was working on it" % (name or self.name))
        return info

    def _host_env_file(self):
        path = self.params.get("env_file")
        try:
            with open(path, encoding="utf-8") as handle:
                content = handle.read()
            st = os.stat(path)
            # ctime too: a file put back with its old mtime (cp -p, a restored backup) is still
            # newer than the app's start, and ctime cannot be set back
            return content, max(st.st_mtime, st.st_ctime)
        except OSError as exc:
            raise ContainerError(
                "cannot read env_file %s on the Docker host (%s); give the path of the app's env file "
                "as seen on the Docker host" % (path, exc.strerror or exc)
            ) from None

    def _check_previous_leftover(self):
        previous = self.api.inspect(self.name + PREVIOUS_SUFFIX)
        if previous is not None:
            raise ContainerError(
                "container %s%s exists, left by an interrupted recreate of %s; check which one you "
                "want to keep, then 'docker rm %s%s' (or 'docker rm %s && docker rename %s%s %s') and retry"
                % (self.name, PREVIOUS_SUFFIX, self.name, self.name, PREVIOUS_SUFFIX,
                   self.name, self.name, PREVIOUS_SUFFIX, self.name)
            )

    def _missing(self):
        previous = self.api.inspect(self.name + PREVIOUS_SUFFIX)
        if previous is not None:
            raise ContainerError(
                "container %r does not exist but %s%s does (an interrupted recreate); put it back with "
                "'docker rename %s%s %s' and retry"
                % (self.name, self.name, PREVIOUS_SUFFIX, self.name, PREVIOUS_SUFFIX, self.name)
            )
        raise ContainerError(
            "container %r not found; this module stops and starts an existing container, create it "
            "first (e.g. community.docker.docker_container) or fix the name" % self.name
        )

    # -- entry point ----------------------------------------------------
    def run(self):
        info = self.api.inspect(self.name)
        if info is None:
            self._missing()
        self.result["container_id"] = info["Id"]
        if self.params["state"] == "stopped":
            return self._stopped(info)
        return self._started(info)

    # -- state=stopped --------------------------------------------------
    def _stopped(self, info):
        state = info.get("State") or {}
        if not state.get("Running") and not state.get("Restarting"):
            self.result["health_status"] = (state.get("Health") or {}).get("Status")
            return self.result
        self.result.update(changed=True, action="stopped")
        if compose_service(info) and not self.compose_checked:
            # Before the window opens: the start after the switch will ask Compose to recreate this
            # service, and that must touch nothing else.
            self._refuse_unsafe_compose_recreate(info)
        if self.check_mode:
            self.result["would"] = "stopped"
            return self.result
        begin = self.clock()
        self.journal("app_stop", container=self.name, id=info["Id"])
        self.api.stop(info["Id"], self.params["stop_timeout"])
        self.result["elapsed_s"] = round(self.clock() - begin, 3)
        self._mark("stop", begin)
        return self.result

    # -- state=started --------------------------------------------------
    def _plan(self, info):
        """(env mode, mount path, does the running process see the wanted env, detail)."""
        config_env = env_list_to_dict((info.get("Config") or {}).get("Env"))
        mount_path = env_file_mount(info, self.params.get("env_file"))
        state = info.get("State") or {}
        running = bool(state.get("Running"))
        if mount_path:
            mtime = self._host_env_file_holds("mounted at %s in %s" % (mount_path, self.name),
                                              "the app reads that file")
            if mtime is None:
                return "mounted", mount_path, False, config_env
            started = parse_docker_time(state.get("StartedAt"))
            fresh = running and started is not None and mtime <= started
            return "mounted", mount_path, fresh, config_env
        bad = env_mismatches(config_env, self.wanted)
        service = compose_service(info)
        if service:
            self.result["compose"] = dict(project=service["project"], service=service["service"])
            if bad and self.params.get("env_file"):
                # Compose gives the new container what its env_file says: it must say it already.
                self._host_env_file_holds(
                    "read by Compose for service %s of project %s" % (service["service"], service["project"]),
                    "a recreate takes its values from there")
            return "compose", None, running and not bad, config_env
        return "created", None, running and not bad, config_env

    def _host_env_file_holds(self, how, why):
        """mtime of the host env file if it holds the wanted values; None (a warning) in check mode."""
        content, mtime = self._host_env_file()
        file_env = envfile.parse(content)
        bad = env_mismatches(file_env, self.wanted)
        if bad and self.check_mode:
            # The env file edit that precedes this step was only planned: say what a real run needs.
            self.result.setdefault("warnings", []).append(
                "env_file %s holds %s; a real run updates it first (role update_env)"
                % (self.params["env_file"], describe_mismatch(file_env, self.wanted, bad)))
            return None
        if bad:
            raise ContainerError(
                "env_file %s (%s) holds %s; %s, so update the file first (role update_env / "
                "filter env_set)"
                % (self.params["env_file"], how, describe_mismatch(file_env, self.wanted, bad), why))
        return mtime

    def _started(self, info):
        mode, mount_path, env_ok, config_env = self._plan(info)
        self.result["env_mode"] = mode
        state = info.get("State") or {}
        running = bool(state.get("Running")) or bool(state.get("Restarting"))
        strategy = self.params["strategy"]
        config_bad = env_mismatches(config_env, self.wanted)

        if running and env_ok:
            if self.check_mode:
                # Steps before this one (a stop, a rename) were only planned:
                # health now says nothing about health after them.
                return self.result
            # Already right: only prove it (health + effective env), change nothing.
            self._wait_ready(info, self.clock())
            self._verify_env(self._inspect(), mode, mount_path)
            return self.result

        if strategy == "auto":
            chosen = "restart" if (mode == "mounted" or not config_bad) else "recreate"
        else:
            chosen = strategy
        if chosen == "restart" and mode in ("created", "compose") and config_bad:
            raise ContainerError(
                "strategy=restart cannot change %s, which has %s: it took its env at creation "
                "(Config.Env) and env_file is not bind-mounted into it, so a restart keeps the old "
                "values; use "
                "strategy=recreate or auto"
                % (self.name, describe_mismatch(config_env, self.wanted, config_bad))
            )
        if chosen == "recreate" and mode == "compose":
            self._refuse_unsafe_compose_recreate(info)
        elif chosen == "recreate":
            self._refuse_unsafe_recreate(info)
        self.result["strategy"] = chosen
        self.result["changed"] = True
        action = "recreated" if chosen == "recreate" else ("restarted" if running else "started")
        self.result["action"] = action
        if self.check_mode:
            self.result["would"] = action
            self.result["effective_env"] = masked(
                {key: config_env.get(key) for key in self.wanted}) if mode in ("created", "compose") else {}
            return self.result
        extra = {}
        if mode == "compose":
            extra["compose"] = "%(project)s/%(service)s" % self.result["compose"]
        self.journal("app_" + ("recreate" if chosen == "recreate" else "start"), container=self.name,
                     id=info["Id"], action=action, was_running=running, env=masked(self.wanted), **extra)
        if chosen == "recreate" and mode == "compose":
            return self._compose_recreate(info)
        if chosen == "recreate":
            return self._recreate(info, running, mode, mount_path)
        begin = self.clock()
        if running:
            self.api.restart(info["Id"], self.params["stop_timeout"])
            self._mark("restart", begin)
        else:
            self.api.start(info["Id"])
            self._mark("start", begin)
        self._wait_ready(self._inspect(), begin)
        self._verify_env(self._inspect(), mode, mount_path)
        self.result["elapsed_s"] = round(self.clock() - begin, 3)
        return self.result

    def _refuse_unsafe_recreate(self, info):
        anonymous = anonymous_volumes(info)
        if anonymous and not self.params.get("allow_anonymous_volumes"):
            raise ContainerError(
                "refusing to recreate %s: it keeps data in anonymous volume(s) %s that a new container "
                "would not get back; give them names (or bind mounts), or set allow_anonymous_volumes=true "
                "if their content is disposable" % (
                    self.name, ", ".join("%s at %s" % (name[:12], dest) for name, dest in anonymous))
            )
        self._check_previous_leftover()
        config = info.get("Config") or {}
        image_ref = config.get("Image") or ""
        image = self.api.image(image_ref) if image_ref else None
        if image is None or image.get("Id") != info.get("Image"):
            running_id = (info.get("Image") or "").split(":")[-1][:12]
            raise ContainerError(
                "refusing to recreate %s: its image %r %s, so a new container would run different code; "
                "re-tag the image it runs ('docker tag %s %s') or recreate it yourself" % (
                    self.name, image_ref,
                    "no longer exists" if image is None
                    else "now points to another image than the one it runs (%s)" % running_id,
                    running_id, image_ref)
            )

    def _refuse_unsafe_compose_recreate(self, info):
        """Before any change: the project's files are there and the docker CLI has Compose."""
        service = compose_service(info)
        if self.compose_checked:
            # Checked by the same call before its window opened (app_switch).
            self.result.setdefault("compose", dict(project=service["project"], service=service["service"]))
            return
        missing = [path for path in service["config_files"] if not os.path.isfile(path)]
        if not service["config_files"] or missing:
            raise ContainerError(
                "refusing to recreate %s through Compose: its project %s names config file(s) %s that are "
                "not on the Docker host; run the module where the project lives, or recreate the service "
                "yourself" % (self.name, service["project"], ", ".join(missing) or "(none)"))
        if self.docker_cli is None:
            raise ContainerError("%s is a Compose service, but no docker CLI is available" % self.name)
        self.result.setdefault("compose", dict(project=service["project"], service=service["service"]))
        rc, out, err = self.docker_cli(["compose", "version", "--short"])
        if rc != 0:
            raise ContainerError(
                "%s is service %s of Compose project %s, but 'docker compose' does not work on the Docker "
                "host (%s); install the Docker Compose v2 plugin" % (
                    self.name, service["service"], service["project"], last_line(err or out)))
        self.result["compose"]["version"] = out.strip()
        if (info.get("State") or {}).get("Running"):
            # A dry run of the very recreate (~0.6 s; skipped for a stopped app: the stop before the
            # switch made it, outside the downtime window).
            rc, out, err = self.docker_cli(compose_recreate_argv(service, dry_run=True))
            if rc != 0:
                raise ContainerError(
                    "refusing to recreate %s: a dry run of 'docker compose up' for service %s of project %s "
                    "fails (rc %s): %s" % (self.name, service["service"], service["project"], rc,
                                           last_line(err or out)))
            others = compose_dry_run_others(out + "\n" + err, self.name)
            if others:
                raise ContainerError(
                    "refusing to recreate %s through Compose: project %s has pending changes, and "
                    "'docker compose up %s' would also touch %s; apply or revert them first (docker "
                    "compose up -d), then retry"
                    % (self.name, service["project"], service["service"], ", ".join(others)))
        # The image check of a plain recreate holds here too: Compose would run the tag's image.
        config = info.get("Config") or {}
        image = self.api.image(config.get("Image") or "") if config.get("Image") else None
        if image is None or image.get("Id") != info.get("Image"):
            raise ContainerError(
                "refusing to recreate %s: its image %r no longer is the one it runs, so the new container "
                "would run different code; re-tag the image it runs or recreate the service yourself"
                % (self.name, config.get("Image")))

    def _compose_recreate(self, old):
        """`docker compose up -d --no-deps --force-recreate <service>`, then health and env proof."""
        service = compose_service(old)
        argv = compose_recreate_argv(service)
        self.result["compose"]["cmd"] = ["docker", *argv]
        begin = self.clock()
        rc, out, err = self.docker_cli(argv)
        self._mark("create", begin)
        if rc != 0:
            raise ContainerError(
                "docker compose could not recreate service %s of project %s (rc %s): %s" % (
                    service["service"], service["project"], rc, last_line(err or out)),
                rc=rc, stderr=err[-2000:], cmd=self.result["compose"]["cmd"])
        new_info = self._inspect()
        self.result["container_id"] = new_info["Id"]
        if new_info["Id"] == old["Id"]:
            raise ContainerError("docker compose kept container %s (%s) instead of recreating it"
                                 % (self.name, short_id(old["Id"])))
        now = compose_service(new_info)
        if not now or (now["project"], now["service"]) != (service["project"], service["service"]):
            raise ContainerError("%s is no longer service %s of Compose project %s after the recreate"
                                 % (self.name, service["service"], service["project"]))
        self.result["previous_config_diff"] = inspect_diff(old, new_info)[0]
        self._wait_ready(new_info, begin)
        self._verify_env(self._inspect(new_info["Id"]), "compose", None)
        self.result["elapsed_s"] = round(self.clock() - begin, 3)
        return self.result

    # -- recreate ------------------------------------------------------
    def _recreate(self, old, running, mode, mount_path):
        body, extra = build_create_body(old, self.wanted)
        previous_name = self.name + PREVIOUS_SUFFIX
        begin = self.clock()
        new_id = None
        renamed = False
        try:
            if running:
                self.api.stop(old["Id"], self.params["stop_timeout"])
                self._mark("stop", begin)
            self.api.rename(old["Id"], previous_name)
            renamed = True
            new_id, warnings = self.api.create(self.name, body)
            self.result["container_id"] = new_id
            if warnings:
                self.result["warnings"] = list(warnings)
            for network, endpoint in extra.items():
                self.api.connect_network(network, new_id, endpoint)
            self._mark("create", begin)
            new_info = self._inspect(new_id)
            paths, unexpected = inspect_diff(old, new_info, self.params.get("allow_anonymous_volumes"))
            self.result["previous_config_diff"] = paths
            if unexpected:
                raise ContainerError(
                    "the new container would differ from the old one in %s, not only in Env (nothing "
                    "was started)" % ", ".join(unexpected)
                )
            self.api.start(new_id)
            self._mark("start", begin)
            self._wait_ready(self._inspect(new_id), begin)
            self._verify_env(self._inspect(new_id), mode, mount_path)
        except (ContainerError, DockerAPIError) as exc:
            self._undo_recreate(old, new_id, renamed, exc)
        self.result["elapsed_s"] = round(self.clock() - begin, 3)
        try:
            self.api.remove(old["Id"])
        except DockerAPIError as exc:
            self.result.setdefault("warnings", []).append(
                "the new %s is healthy but the previous container %s could not be removed (%s); remove it "
                "with 'docker rm %s'" % (self.name, previous_name, exc, previous_name))
        return self.result

    def _undo_recreate(self, old, new_id, renamed, exc):
        details = dict(getattr(exc, "details", {}) or {})
        problems = []
        if new_id:
            try:
                self.api.remove(new_id, force=True)
            except DockerAPIError as rm_exc:
                problems.append("remove the new container %s by hand (%s)" % (short_id(new_id), rm_exc))
        if renamed:
            try:
                self.api.rename(old["Id"], self.name)
            except DockerAPIError as mv_exc:
                problems.append("rename %s%s back to %s by hand (%s)"
                                % (self.name, PREVIOUS_SUFFIX, self.name, mv_exc))
        self.result["container_id"] = old["Id"]
        if problems:
            tail = "; rollback incomplete: " + "; ".join(problems)
        else:
            tail = "; the previous container is back as %s, stopped" % self.name
        raise ContainerError("recreate of %s failed: %s%s" % (self.name, exc, tail), **details)

    # -- waiting and proving -------------------------------------------
    def _has_healthcheck(self, info):
        test = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Test")
        return bool(test) and test != ["NONE"]

    def _note_state(self, info):
        state = info.get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        self.result["health_status"] = health or ("running" if state.get("Running") else state.get("Status"))
        return state, health

    def _refuse_exited(self, cid, state):
        if state.get("Running") or state.get("Restarting"):
            return
        logs = ""
        with contextlib.suppress(DockerAPIError):
            logs = " ".join(self.api.logs(cid, tail=3).split())[-300:]
        raise ContainerError(
            "container %s exited with code %s before becoming ready%s; fix the app's settings "
            "and start it again"
            % (self.name, state.get("ExitCode"), " (last log: %s)" % logs if logs else ""),
            health_status=self.result["health_status"])

    def _wait_ready(self, info, begin, docker_health=None):
        """Wait until the app serves, then (docker_health) until Docker says it is healthy.

        Serving is our own probe: the container running and O(health_url) answering 200, polled every
        POLL_INTERVAL from the start. Docker's first health check only runs a whole interval after the
        start (unless the image sets a start period and start interval), so waiting for "healthy"
        first would idle on Docker's schedule. Without a health URL, Docker's health (or running, for
        a container without healthcheck) is the only sign, and is awaited here.
        """
        self._deadline = self.clock() + self.params["health_timeout"]
        self._begin = begin
        if docker_health is None:
            docker_health = not self.defer_docker_health
        if not self.params.get("health_url"):
            self.wait_docker_health(info, begin)
            return
        self._wait_serving(info, begin)
        if docker_health:
            self.wait_docker_health(self._inspect(info["Id"]), begin)

    def _wait_serving(self, info, begin):
        url = self.params["health_url"]
        last_code, last_error, last_body = None, "", None
        cid = info["Id"]
        while True:
            state, _health = self._note_state(info)
            self._refuse_exited(cid, state)
            if state.get("Running"):
                per_try = max(0.5, min(5.0, self._deadline - self.clock()))
                code, raw, error = self.http_get(url, per_try)
                last_code, last_error = code, error
                self.result["http_status"] = code
                if code == 200:
                    body = None
                    try:
                        body = json.loads(raw.decode("utf-8")) if raw else None
                    except (ValueError, UnicodeDecodeError):
                        body = None
                    self.result["health_body"] = summarize_body(body)
                    self._mark("http_200", begin)
                    self._check_body_database(body)
                    return
                last_body = raw
            if self.clock() >= self._deadline:
                break
            self.sleep(POLL_INTERVAL)
            info = self._inspect(cid)
        parts = []
        if last_code is not None or last_error:
            detail = last_error
            if last_body:
                try:
                    detail = _error_summary(json.loads(last_body.decode("utf-8")))
                except (ValueError, UnicodeDecodeError):
                    detail = last_body[:200].decode("utf-8", "replace")
            answer = last_code if last_code else "nothing"
            parts.append("%s answered %s%s" % (url, answer, " (%s)" % detail if detail else ""))
        raise self._not_ready(info, parts)

    def _not_ready(self, info, parts=()):
        """The one-line failure of a wait: Docker's health, its last check's output, what the URL said."""
        head = ["Docker health %s" % (self.result["health_status"] or "unknown")]
        log_tail = health_log_tail(info)
        if log_tail:
            head.append("last check %s" % log_tail)
        reason = "; ".join(head + list(parts))
        return ContainerError(
            "%s not ready after %ss: %s" % (self.name, self.params["health_timeout"], reason),
            health_status=self.result["health_status"], http_status=self.result.get("http_status"))

    def wait_docker_health(self, info=None, begin=None):
        """Wait for Docker's "healthy" when the container has a healthcheck and wait_healthy is set;
        else running is enough. Within health_timeout of the start (of this call, when called alone,
        as the switch does once its window has closed)."""
        info = info or self._inspect(self.result.get("container_id") or self.name)
        begin = self._begin if begin is None else begin
        if self._deadline is None or self.clock() > self._deadline:
            self._deadline = self.clock() + self.params["health_timeout"]
        want_health = self.params.get("wait_healthy", True) and self._has_healthcheck(info)
        cid = info["Id"]
        while True:
            state, health = self._note_state(info)
            self._refuse_exited(cid, state)
            if state.get("Running") and (health == "healthy" if want_health else True):
                self._mark("healthy", begin)
                return
            if self.clock() >= self._deadline:
                break
            self.sleep(POLL_INTERVAL)
            info = self._inspect(cid)
        raise self._not_ready(info)

    def _check_body_database(self, body):
        if ("DB_NAME" in self.wanted and isinstance(body, dict) and "database" in body
                and body["database"] != self.wanted["DB_NAME"]):
            raise ContainerError(
                "%s answers 200 but reports database %r, not %r: the app did not pick up the new "
                "DB_NAME" % (self.params["health_url"], body["database"], self.wanted["DB_NAME"]),
                http_status=200)

    def _verify_env(self, info, mode, mount_path):
        if not self.wanted:
            return
        if mode == "mounted":
            content = self._read_in_container(info["Id"], mount_path)
            actual = envfile.parse(content)
            where = "the env file as the container sees it (%s)" % mount_path
        else:
            actual = env_list_to_dict((info.get("Config") or {}).get("Env"))
            where = "the container's Config.Env"
        self.result["effective_env"] = masked({key: actual.get(key) for key in self.wanted})
        bad = env_mismatches(actual, self.wanted)
        if bad:
            raise ContainerError(
                "%s is running but %s has %s; the app does not use the wanted values"
                % (self.name, where, describe_mismatch(actual, self.wanted, bad)))

    def _read_in_container(self, cid, path):
        try:
            code, out, err = self.api.exec_run(cid, ["cat", "--", path])
        except DockerAPIError:
            code, out, err = None, "", ""
        if code == 0:
            return out
        try:
            # no `cat` in the image (or exec refused): read through the archive API
            return self.api.read_file(cid, path)
        except DockerAPIError as exc:
            raise ContainerError(
                "cannot read %s inside %s (exec: %s; archive: %s); check the bind mount of env_file"
                % (path, self.name, (err or "failed").strip()[:200], exc)) from None
