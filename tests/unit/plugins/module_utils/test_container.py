# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for app_container's logic: create body, inspect diff, env modes, plans."""

from __future__ import annotations

import copy
import json
import os

import pytest


from ansible_collections.qadhya.dbops.plugins.module_utils import _container as ct

OLD_ID = "0e9f2966cb31cccc4732fba159ee59a281d53f4cad6510b74e736415c560a3a1"
NEW_ID = "80c66007a14f8aeae3132cb16d477beaae050a7036bf3a0015c33c018ad9093d"
IMAGE_ID = "sha256:594a924643ff" + "0" * 52
ANON = "a" * 64


def inspect_doc(cid=OLD_ID, env_db="qadhya", hostname=None, mounts=None, running=True, health="healthy"):
    """A docker inspect of an app container with everything a recreate must keep."""
    return {
        "Id": cid,
        "Created": "2026-11-29T04:18:12.275529542Z",
        "Name": "/qadhya-nextjs",
        "Image": IMAGE_ID,
        "Path": "python3",
        "Args": ["/app/app.py"],
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "ResolvConfPath": "/var/lib/docker/containers/%s/resolv.conf" % cid,
        "LogPath": "/var/lib/docker/containers/%s/%s-json.log" % (cid, cid),
        "State": {"Status": "running" if running else "exited", "Running": running, "Restarting": False,
                  "ExitCode": 0, "StartedAt": "2026-11-29T04:18:12.63342017Z",
                  "Health": {"Status": health,
                             "Log": [{"ExitCode": 1, "Output": "Traceback\n  x\nHTTP Error 503"}]}},
        "GraphDriver": {"Data": {"MergedDir": "/var/lib/docker/overlay2/%s/merged" % cid}},
        "Config": {
            "Hostname": hostname if hostname is not None else cid[:12],
            "Domainname": "",
            "User": "app",
            "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
            "ExposedPorts": {"3000/tcp": {}},
            "Tty": False, "OpenStdin": False, "StdinOnce": False,
            "Env": ["DB_NAME=%s" % env_db, "DB_USER=moncabinet", "DB_PASSWORD=pw",
                    "PATH=/usr/local/sbin:/usr/bin"],
            "Cmd": ["python3", "/app/app.py"],
            "Healthcheck": {"Test": ["CMD", "python3", "-c", "probe"], "Interval": 1000000000,
                            "Timeout": 2000000000, "StartPeriod": 5000000000, "Retries": 3},
            "Image": "qadhya-lab/app:1",
            "Volumes": {"/data": {}},
            "WorkingDir": "/app",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": {"qadhya.lab.instance": "default", "com.docker.compose.project": "qadhya"},
            "StopSignal": "SIGTERM",
            "StopTimeout": 15,
        },
        "HostConfig": {
            "Binds": ["/opt/moncabinet:/config:ro"],
            "NetworkMode": "qadhya-net",
            "PortBindings": {"3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3000"}]},
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}},
            "Init": True,
            "Links": ["/qadhya-postgres:/qadhya-nextjs/db"],
            "Mounts": [{"Type": "volume", "Source": "appcache", "Target": "/cache"}],
        },
        "Mounts": mounts if mounts is not None else [
            {"Type": "bind", "Source": "/opt/moncabinet", "Destination": "/config", "Mode": "ro",
             "RW": False, "Propagation": "rprivate"},
            {"Type": "volume", "Name": "appcache", "Source": "/var/lib/docker/volumes/appcache/_data",
             "Destination": "/cache", "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""},
        ],
        "NetworkSettings": {
            "SandboxID": "f308cba0",
            "Ports": {"3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3000"}]},
            "Networks": {
                "qadhya-net": {"IPAMConfig": {"IPv4Address": "172.30.0.10"}, "Links": None,
                               "Aliases": ["app", "nextjs", cid[:12]], "NetworkID": "n1",
                               "EndpointID": "e-" + cid[:4], "IPAddress": "172.30.0.10"},
                "monitoring": {"IPAMConfig": None, "Links": None, "Aliases": ["web", cid[:12]],
                               "NetworkID": "n2", "EndpointID": "e2-" + cid[:4], "IPAddress": "172.31.0.5"},
            },
        },
    }


# --------------------------------------------------------------------------
# create body
# --------------------------------------------------------------------------


def test_create_body_keeps_config_and_changes_only_env():
    info = inspect_doc()
    body, extra = ct.build_create_body(info, {"DB_NAME": "moncabinet", "NEW": "1"})
    assert body["Env"] == ["DB_NAME=moncabinet", "DB_USER=moncabinet", "DB_PASSWORD=pw",
                           "PATH=/usr/local/sbin:/usr/bin", "NEW=1"]
    assert body["Image"] == "qadhya-lab/app:1"
    assert body["Cmd"] == ["python3", "/app/app.py"]
    assert body["Healthcheck"] == info["Config"]["Healthcheck"]
    assert body["Labels"] == info["Config"]["Labels"]
    assert body["ExposedPorts"] == {"3000/tcp": {}}
    assert body["User"] == "app" and body["WorkingDir"] == "/app"
    assert body["StopSignal"] == "SIGTERM" and body["StopTimeout"] == 15
    assert body["Volumes"] == {"/data": {}}
    # auto-generated hostname (the old id prefix) is left to Docker
    assert "Hostname" not in body
    host = body["HostConfig"]
    assert host["PortBindings"] == info["HostConfig"]["PortBindings"]
    assert host["Binds"] == ["/opt/moncabinet:/config:ro"]
    assert host["Mounts"] == info["HostConfig"]["Mounts"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["LogConfig"] == info["HostConfig"]["LogConfig"] and host["Init"] is True
    assert host["NetworkMode"] == "qadhya-net"
    # legacy links go back to the create form
    assert host["Links"] == ["qadhya-postgres:db"]
    endpoint = body["NetworkingConfig"]["EndpointsConfig"]["qadhya-net"]
    assert endpoint == {"IPAMConfig": {"IPv4Address": "172.30.0.10"}, "Aliases": ["app", "nextjs"]}
    assert extra == {"monitoring": {"Aliases": ["web"]}}
    # the source document is not modified
    assert info["Config"]["Env"][0] == "DB_NAME=qadhya"
    assert info["HostConfig"]["Links"] == ["/qadhya-postgres:/qadhya-nextjs/db"]


def test_create_body_keeps_an_explicit_hostname():
    body, _extra = ct.build_create_body(inspect_doc(hostname="app-1"), {})
    assert body["Hostname"] == "app-1"


def test_create_body_default_bridge_has_no_alias_and_host_mode_no_endpoint():
    info = inspect_doc()
    info["HostConfig"]["NetworkMode"] = "default"
    info["NetworkSettings"]["Networks"] = {"bridge": {"Aliases": None, "IPAMConfig": None}}
    body, extra = ct.build_create_body(info, {})
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"bridge": {}}}
    assert extra == {}
    info["HostConfig"]["NetworkMode"] = "host"
    info["NetworkSettings"]["Networks"] = {"host": {}}
    body, extra = ct.build_create_body(info, {})
    assert "NetworkingConfig" not in body and extra == {}


def test_merge_env_replaces_in_place_drops_duplicates_and_appends():
    assert ct.merge_env(["A=1", "B=2", "A=3"], {"A": "9", "C": "x=y"}) == ["A=9", "B=2", "C=x=y"]


# --------------------------------------------------------------------------
# inspect diff
# --------------------------------------------------------------------------


def recreated(info, new_env="moncabinet"):
    new = copy.deepcopy(info)
    new["Id"] = NEW_ID
    new["Created"] = "2026-11-29T05:00:00.1Z"
    new["Config"]["Env"][0] = "DB_NAME=%s" % new_env
    new["Config"]["Hostname"] = NEW_ID[:12]
    new["ResolvConfPath"] = new["ResolvConfPath"].replace(OLD_ID, NEW_ID)
    new["State"] = {"Status": "created", "Running": False}
    for endpoint in new["NetworkSettings"]["Networks"].values():
        endpoint["Aliases"] = [a for a in endpoint["Aliases"] if a != OLD_ID[:12]] + [NEW_ID[:12]]
        endpoint["EndpointID"] = ""
        endpoint["NetworkID"] = ""
    return new


def test_inspect_diff_only_env_and_ids():
    old = inspect_doc()
    paths, unexpected = ct.inspect_diff(old, recreated(old))
    assert paths == ["Config.Env", "Created", "Id"]
    assert unexpected == []


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["HostConfig"]["PortBindings"]["3000/tcp"][0].update(HostPort="3001"),
     "HostConfig.PortBindings.3000/tcp"),
    (lambda d: d["HostConfig"].update(RestartPolicy={"Name": "no", "MaximumRetryCount": 0}),
     "HostConfig.RestartPolicy.Name"),
    (lambda d: d["Config"]["Labels"].pop("qadhya.lab.instance"), "Config.Labels.qadhya.lab.instance"),
    (lambda d: d["Config"].update(Cmd=["sh"]), "Config.Cmd"),
    (lambda d: d["Config"]["Healthcheck"].update(Retries=1), "Config.Healthcheck.Retries"),
    (lambda d: d["NetworkSettings"]["Networks"]["monitoring"].update(Aliases=[NEW_ID[:12]]),
     "Networks.monitoring.Aliases"),
    (lambda d: d["NetworkSettings"]["Networks"].pop("monitoring"), "Networks.monitoring"),
    (lambda d: d.update(Image="sha256:other"), "Image"),
    (lambda d: d["Mounts"][0].update(Source="/elsewhere"), "Mounts./config.Source"),
    (lambda d: d["Config"].update(Hostname="explicit"), "Config.Hostname"),
])
def test_inspect_diff_catches_any_other_change(mutate, path):
    old = inspect_doc()
    new = recreated(old)
    mutate(new)
    _paths, unexpected = ct.inspect_diff(old, new)
    assert unexpected == [path]


def test_inspect_diff_anonymous_volumes_only_when_allowed():
    mounts = [{"Type": "volume", "Name": ANON, "Source": "/var/lib/docker/volumes/%s/_data" % ANON,
               "Destination": "/data", "RW": True}]
    old = inspect_doc(mounts=mounts)
    new = recreated(old)
    other = "b" * 64
    new["Mounts"] = [dict(mounts[0], Name=other, Source="/var/lib/docker/volumes/%s/_data" % other)]
    assert ct.inspect_diff(old, new)[1] == ["Mounts./data.Name", "Mounts./data.Source"]
    assert ct.inspect_diff(old, new, anonymous_ok=True)[1] == []


def test_config_diff_treats_missing_and_empty_alike():
    assert ct.config_diff({"a": None, "b": []}, {"b": None, "c": {}}) == []
    assert ct.config_diff({"a": 1}, {"a": 2, "b": 3}) == ["a", "b"]


# --------------------------------------------------------------------------
# env modes, volumes, small parsers
# --------------------------------------------------------------------------


def test_env_file_mount_directory_file_and_none():
    info = inspect_doc()
    assert ct.env_file_mount(info, "/opt/moncabinet/.env") == "/config/.env"
    assert ct.env_file_mount(info, "/opt/moncabinet2/.env") is None
    assert ct.env_file_mount(info, None) is None
    info["Mounts"].append({"Type": "bind", "Source": "/opt/moncabinet/.env", "Destination": "/run/app.env"})
    # the most specific mount wins
    assert ct.env_file_mount(info, "/opt/moncabinet/.env") == "/run/app.env"
    info["Mounts"] = [{"Type": "bind", "Source": "/", "Destination": "/host"}]
    assert ct.env_file_mount(info, "/opt/x/.env") == "/host/opt/x/.env"


def test_anonymous_volumes_ignores_named_ones():
    mounts = [
        {"Type": "volume", "Name": ANON, "Destination": "/data"},
        {"Type": "volume", "Name": "appcache", "Destination": "/cache"},
        {"Type": "bind", "Source": "/opt", "Destination": "/config"},
    ]
    info = inspect_doc(mounts=mounts)
    assert ct.anonymous_volumes(info) == [(ANON, "/data")]
    # a 64-hex name given explicitly in Binds is a named volume
    info["HostConfig"]["Binds"].append("%s:/data" % ANON)
    assert ct.anonymous_volumes(info) == []


def test_parse_docker_time():
    assert ct.parse_docker_time("1970-01-01T00:00:01.5Z") == pytest.approx(1.5)
    assert ct.parse_docker_time("1970-01-01T01:00:01+01:00") == pytest.approx(1.0)
    assert ct.parse_docker_time("0001-01-01T00:00:00Z") is None
    assert ct.parse_docker_time("garbage") is None


def test_health_log_tail_takes_last_line():
    assert ct.health_log_tail(inspect_doc()) == "exit 1: HTTP Error 503"


# --------------------------------------------------------------------------
# plans and sequences, with a fake engine
# --------------------------------------------------------------------------


class FakeAPI:
    """Enough of DockerAPI to drive AppContainer; records the calls."""

    def __init__(self, containers, new_health="healthy", env_in_container=None):
        self.containers = {info["Name"].lstrip("/"): info for info in containers}
        self.calls = []
        self.new_health = new_health
        self.env_in_container = env_in_container

    def _find(self, ref):
        for name, info in self.containers.items():
            if ref in (name, info["Id"]):
                return name, info
        return None, None

    def inspect(self, ref):
        _name, info = self._find(ref)
        return copy.deepcopy(info) if info else None

    def image(self, ref):
        return {"Id": IMAGE_ID}

    def stop(self, cid, timeout):
        self.calls.append(("stop", cid[:4]))
        self._find(cid)[1]["State"].update(Running=False, Status="exited")

    def start(self, cid):
        self.calls.append(("start", cid[:4]))
        health = self.new_health if cid == NEW_ID else "healthy"
        self._find(cid)[1]["State"].update(Running=True, Status="running",
                                           Health={"Status": health, "Log": []},
                                           StartedAt="2999-01-01T00:00:00Z")

    def restart(self, cid, timeout):
        self.calls.append(("restart", cid[:4]))
        self.start(cid)
        self.calls.pop()

    def rename(self, cid, new_name):
        self.calls.append(("rename", cid[:4], new_name))
        name, info = self._find(cid)
        del self.containers[name]
        info["Name"] = "/" + new_name
        self.containers[new_name] = info

    def create(self, name, body):
        self.calls.append(("create", name))
        self.created_body = body
        old = self.containers[name + ct.PREVIOUS_SUFFIX]
        new = recreated(old)
        new["Name"] = "/" + name
        new["Config"]["Env"] = body["Env"]
        self.containers[name] = new
        return NEW_ID, []

    def connect_network(self, network, cid, endpoint):
        self.calls.append(("connect", network))

    def remove(self, cid, force=False):
        self.calls.append(("remove", cid[:4]))
        name, _info = self._find(cid)
        del self.containers[name]

    def logs(self, cid, tail=5):
        return "log line"

    def exec_run(self, cid, argv):
        return 0, self.env_in_container, ""


def params(**kw):
    base = dict(name="qadhya-nextjs", state="started", env={"DB_NAME": "moncabinet"}, env_file=None,
                strategy="auto", health_url="http://127.0.0.1:3000/api/health", health_timeout=1,
                wait_healthy=True, stop_timeout=10, validate_certs=True, allow_anonymous_volumes=False)
    base.update(kw)
    return base


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def http_ok(database="moncabinet"):
    def get(url, timeout):
        return 200, json.dumps({"status": "ok", "database": database, "documents": 580}).encode(), ""
    return get


def manager(api, p, http=None, check_mode=False):
    clock = Clock()
    return ct.AppContainer(p, api, http or http_ok(), check_mode=check_mode, clock=clock, sleep=clock.sleep)


def created_mode_container(**kw):
    info = inspect_doc(mounts=[], **kw)
    info["HostConfig"]["Binds"] = []
    return info


def test_running_with_wanted_env_is_no_change():
    api = FakeAPI([created_mode_container(env_db="moncabinet")])
    result = manager(api, params()).run()
    assert result["changed"] is False and result["action"] == "none" and result["strategy"] == "none"
    assert result["effective_env"] == {"DB_NAME": "moncabinet"}
    assert result["http_status"] == 200 and result["health_body"]["documents"] == 580
    assert api.calls == []


def test_check_mode_reports_recreate_and_does_nothing():
    api = FakeAPI([created_mode_container(running=False)])
    result = manager(api, params(), check_mode=True).run()
    assert result["changed"] is True and result["would"] == "recreated" and result["strategy"] == "recreate"
    assert api.calls == []


def test_stopped_created_mode_is_recreated_with_same_config():
    api = FakeAPI([created_mode_container(running=False)])
    result = manager(api, params()).run()
    assert result["action"] == "recreated" and result["container_id"] == NEW_ID
    assert result["previous_config_diff"] == ["Config.Env", "Created", "Id"]
    assert [c[0] for c in api.calls] == ["rename", "create", "connect", "start", "remove"]
    assert ("rename", OLD_ID[:4], "qadhya-nextjs.dbops-previous") in api.calls
    assert set(api.containers) == {"qadhya-nextjs"}
    assert result["effective_env"] == {"DB_NAME": "moncabinet"}


def test_running_container_is_stopped_before_recreate():
    api = FakeAPI([created_mode_container(running=True)])
    manager(api, params()).run()
    assert api.calls[0] == ("stop", OLD_ID[:4])


def test_failed_recreate_puts_old_container_back_stopped():
    api = FakeAPI([created_mode_container(running=False)], new_health="starting")
    with pytest.raises(ct.ContainerError) as err:
        manager(api, params(env={"DB_NAME": "nonexistent"}),
                http=lambda url, t: (503, b'{"status": "error", "database": "nonexistent"}', "")).run()
    msg = str(err.value)
    assert "Docker health starting" in msg and "answered 503" in msg and "nonexistent" in msg
    assert "previous container is back as qadhya-nextjs, stopped" in msg
    assert "\n" not in msg
    assert set(api.containers) == {"qadhya-nextjs"}
    assert api.containers["qadhya-nextjs"]["Id"] == OLD_ID
    assert api.containers["qadhya-nextjs"]["State"]["Running"] is False
    assert ("remove", NEW_ID[:4]) in api.calls


def test_health_200_on_wrong_database_fails():
    api = FakeAPI([created_mode_container(running=False)])
    with pytest.raises(ct.ContainerError, match="reports database 'qadhya', not 'moncabinet'"):
        manager(api, params(), http=http_ok("qadhya")).run()
    assert api.containers["qadhya-nextjs"]["Id"] == OLD_ID


def test_restart_strategy_refused_in_created_mode_before_any_change():
    api = FakeAPI([created_mode_container(running=False)])
    with pytest.raises(ct.ContainerError, match="took its env at creation.*use strategy=recreate"):
        manager(api, params(strategy="restart")).run()
    assert api.calls == []


def test_restart_strategy_when_config_env_already_right():
    api = FakeAPI([created_mode_container(env_db="moncabinet", running=False)])
    result = manager(api, params()).run()
    assert result["strategy"] == "restart" and result["action"] == "started"
    assert api.calls == [("start", OLD_ID[:4])]


def test_mounted_mode_restarts_when_file_is_newer(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DB_NAME=moncabinet\nDB_PASSWORD=pw\n")
    info = inspect_doc(mounts=[{"Type": "bind", "Source": str(tmp_path), "Destination": "/config"}])
    info["State"]["StartedAt"] = "2000-01-01T00:00:00Z"  # started before the file changed
    api = FakeAPI([info], env_in_container="DB_NAME=moncabinet\n")
    result = manager(api, params(env_file=str(env))).run()
    assert result["env_mode"] == "mounted" and result["action"] == "restarted"
    assert result["effective_env"] == {"DB_NAME": "moncabinet"}
    # rerun: started after the file's last change -> nothing to do
    again = manager(api, params(env_file=str(env))).run()
    assert again["changed"] is False


def test_mounted_mode_restored_file_with_old_mtime_still_restarts(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DB_NAME=moncabinet\n")
    os.utime(env, (946684800, 946684800))  # mtime 2000-01-01, as a `cp -p` of an old backup
    info = inspect_doc(mounts=[{"Type": "bind", "Source": str(tmp_path), "Destination": "/config"}])
    info["State"]["StartedAt"] = "2010-01-01T00:00:00Z"
    api = FakeAPI([info], env_in_container="DB_NAME=moncabinet\n")
    result = manager(api, params(env_file=str(env))).run()
    assert result["action"] == "restarted"


def test_mounted_mode_refuses_when_file_lacks_the_values(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DB_NAME=qadhya\n")
    info = inspect_doc(mounts=[{"Type": "bind", "Source": str(tmp_path), "Destination": "/config"}])
    api = FakeAPI([info])
    with pytest.raises(ct.ContainerError,
                       match="holds DB_NAME=qadhya instead of moncabinet; .*update_env"):
        manager(api, params(env_file=str(env))).run()
    assert api.calls == []


def test_mounted_mode_check_run_warns_when_file_not_updated_yet(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DB_NAME=qadhya\n")
    info = inspect_doc(mounts=[{"Type": "bind", "Source": str(tmp_path), "Destination": "/config"}])
    api = FakeAPI([info])
    result = manager(api, params(env_file=str(env)), check_mode=True).run()
    assert result["would"] == "restarted"
    assert "holds DB_NAME=qadhya instead of moncabinet" in result["warnings"][0]
    assert api.calls == []


def test_mounted_mode_effective_env_checked_inside_container(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DB_NAME=moncabinet\n")
    info = inspect_doc(running=False,
                       mounts=[{"Type": "bind", "Source": str(tmp_path), "Destination": "/config"}])
    api = FakeAPI([info], env_in_container="DB_NAME=stale\n")
    with pytest.raises(ct.ContainerError, match=r"the env file as the container sees it \(/config/.env\)"):
        manager(api, params(env_file=str(env))).run()


def test_anonymous_volume_refuses_recreate():
    info = created_mode_container(running=False)
    info["Mounts"] = [{"Type": "volume", "Name": ANON, "Destination": "/data"}]
    api = FakeAPI([info])
    with pytest.raises(ct.ContainerError, match="anonymous volume.*allow_anonymous_volumes"):
        manager(api, params()).run()
    assert api.calls == []


def test_leftover_previous_container_refuses_recreate():
    left = created_mode_container(running=False)
    left["Name"] = "/qadhya-nextjs.dbops-previous"
    left["Id"] = "f" * 64
    api = FakeAPI([created_mode_container(running=False), left])
    with pytest.raises(ct.ContainerError, match="left by an interrupted recreate"):
        manager(api, params()).run()


def test_missing_container_messages():
    with pytest.raises(ct.ContainerError, match="not found; .*create it first"):
        manager(FakeAPI([]), params()).run()
    left = created_mode_container()
    left["Name"] = "/qadhya-nextjs.dbops-previous"
    with pytest.raises(ct.ContainerError, match="docker rename qadhya-nextjs.dbops-previous qadhya-nextjs"):
        manager(FakeAPI([left]), params()).run()


def test_moved_image_tag_refuses_recreate():
    api = FakeAPI([created_mode_container(running=False)])
    api.image = lambda ref: {"Id": "sha256:" + "9" * 64}
    with pytest.raises(ct.ContainerError, match="points to another image"):
        manager(api, params()).run()


def test_state_stopped():
    api = FakeAPI([created_mode_container(running=True)])
    result = manager(api, params(state="stopped")).run()
    assert result["changed"] is True and result["action"] == "stopped"
    again = manager(api, params(state="stopped")).run()
    assert again["changed"] is False and again["action"] == "none"


def test_secret_values_are_masked():
    api = FakeAPI([created_mode_container(env_db="moncabinet")])
    result = manager(api, params(env={"DB_NAME": "moncabinet", "DB_PASSWORD": "pw"})).run()
    assert result["effective_env"] == {"DB_NAME": "moncabinet", "DB_PASSWORD": "********"}
    api = FakeAPI([created_mode_container(running=False)])
    with pytest.raises(ct.ContainerError) as err:
        manager(api, params(strategy="restart", env={"DB_PASSWORD": "new-secret"})).run()
    assert "new-secret" not in str(err.value) and "pw" not in str(err.value).replace("password", "")


def test_serving_is_our_probe_not_dockers_first_health_check():
    # Docker still says "starting" (its first check waits a whole interval): the URL answers
    # 200 at once, and that is when the app serves; Docker's "healthy" is awaited after it.
    api = FakeAPI([created_mode_container(running=False)], new_health="starting")
    mgr = manager(api, params(health_timeout=5))
    mgr.defer_docker_health = True
    result = mgr.run()
    assert result["action"] == "recreated" and result["http_status"] == 200
    assert "http_200" in result["timings"] and "healthy" not in result["timings"]
    assert result["health_status"] == "starting"
    api.containers["qadhya-nextjs"]["State"]["Health"]["Status"] = "healthy"
    mgr.wait_docker_health()
    assert result["health_status"] == "healthy" and "healthy" in result["timings"]


def test_docker_health_is_still_awaited_by_app_container_and_its_failure_named():
    api = FakeAPI([created_mode_container(running=False)], new_health="unhealthy")
    with pytest.raises(ct.ContainerError, match="Docker health unhealthy"):
        manager(api, params(health_timeout=1)).run()
    # the recreate was undone: the old container is back under its name
    assert set(api.containers) == {"qadhya-nextjs"} and api.containers["qadhya-nextjs"]["Id"] == OLD_ID


def test_the_probe_is_polled_while_the_app_boots():
    answers = iter([(None, b"", "ConnectionRefusedError")] * 5)

    def booting(url, timeout):
        return next(answers, (200, json.dumps({"database": "moncabinet"}).encode(), ""))

    api = FakeAPI([created_mode_container(running=False)])
    result = manager(api, params(health_timeout=5), http=booting).run()
    # five refusals 50 ms apart, then the 200
    assert result["timings"]["http_200"] == pytest.approx(5 * ct.POLL_INTERVAL)
