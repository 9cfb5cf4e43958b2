# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker CLI helpers shared by the modules (private).

Programs that must match the server's version (pg_dump, psql, pg_restore)
run inside the database container through ``docker exec``. Secrets never
go on a command line: ``docker exec -e NAME`` copies NAME from the
environment of the docker client process, which we set ourselves.

The docker CLI stays the transport here, apart from the Engine API client
of ``_engine_api`` (used by ``app_container``): a dump must stream through
a pipe without being held in memory, and these modules honour their
``docker_bin`` option.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile


class DockerError(Exception):
    """A docker CLI call failed; the message is safe to show."""


def docker_bin(module):
    path = module.get_bin_path(module.params.get("docker_bin") or "docker")
    if not path:
        raise DockerError(
            "docker CLI not found on the Docker host; install the docker client "
            "or set docker_bin to its path"
        )
    return path


def inspect_container(module, name):
    """Return `docker inspect` of one container, or raise with a clear message."""
    rc, out, err = module.run_command([docker_bin(module), "container", "inspect", "--", name])
    if rc != 0:
        raise DockerError(
            "container %r not found or Docker not reachable (%s); check the container "
            "name in the inventory and that the Docker engine runs" % (name, err.strip())
        )
    return json.loads(out)[0]


def container_state(module, name, env_keys=()):
    """A container's status, labels and the values of `env_keys` in its Config.Env, or None when
    there is no such container. Config.Env holds secrets too: nothing else of it is kept."""
    rc, out, err = module.run_command([docker_bin(module), "container", "inspect", "--", name])
    if rc != 0:
        if "no such" in err.lower():
            return None
        raise DockerError("cannot inspect container %r (%s); check that the Docker engine runs"
                          % (name, err.strip()))
    info = json.loads(out)[0]
    state = info.get("State") or {}
    config = info.get("Config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _sep, value = item.partition("=")
        if key in env_keys:
            env[key] = value  # the last one wins, as in Docker
    return dict(status=state.get("Status") or "", running=bool(state.get("Running")), env=env,
                labels=dict(config.get("Labels") or {}))


def container_ip(module, name):
    """First IP address of a running container on any of its networks."""
    info = inspect_container(module, name)
    state = info.get("State") or {}
    # A paused container is Running too, but answers nobody: a connection would hang.
    if state.get("Paused"):
        raise DockerError("container %r is paused; unpause it (docker unpause %s)" % (name, name))
    if not state.get("Running"):
        raise DockerError("container %r is not running (%s); start it (docker start %s)"
                          % (name, state.get("Status") or "stopped", name))
    for net in (info.get("NetworkSettings", {}).get("Networks") or {}).values():
        if net.get("IPAddress"):
            return net["IPAddress"]
    raise DockerError(
        "container %r has no IP address on any network; set login_host explicitly" % name
    )


def exec_argv(module, container, argv, env=None, user=None, interactive=False):
    """Build the `docker exec` argv and the process env for `argv` in `container`.

    `env` maps variable names to values; only the names reach the argv.
    Returns the argv and the variables to add to the docker client's
    environment.
    """
    cmd = [docker_bin(module), "exec"]
    if interactive:
        cmd.append("-i")
    if user:
        cmd += ["-u", user]
    secrets = {}
    for key, value in (env or {}).items():
        if value is None:
            continue
        cmd += ["-e", key]
        secrets[key] = str(value)
    cmd.append(container)
    cmd += list(argv)
    return cmd, secrets


def run_in_container(module, container, argv, env=None, user=None, data=None):
    """Run a short command in the container; return (rc, stdout, stderr, argv)."""
    cmd, secrets = exec_argv(module, container, argv, env=env, user=user, interactive=data is not None)
    rc, out, err = module.run_command(
        cmd, data=data, binary_data=True, environ_update=secrets, check_rc=False
    )
    return rc, out, err, cmd


def stream_from_container(module, container, argv, env=None, user=None):
    """Start `argv` in the container and return the Popen with a readable stdout.

    The caller reads `proc.stdout` in chunks, then calls `proc.wait()` and
    reads `proc.stderr`; stderr goes to a temporary file so a chatty
    program can never block on a full pipe.
    """
    cmd, secrets = exec_argv(module, container, argv, env=env, user=user)
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed by read_stderr()
    # run_command buffers the whole output in memory; a dump must stream.
    proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
        cmd, stdout=subprocess.PIPE, stderr=errfile, env=dict(os.environ, **secrets)
    )
    proc.errfile = errfile
    proc.cmd = cmd
    return proc


def stream_into_container(module, container, argv, env=None, user=None):
    """Start `argv` in the container with a writable stdin (for restores)."""
    cmd, secrets = exec_argv(module, container, argv, env=env, user=user, interactive=True)
    errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed by read_stderr()
    # run_command needs the whole input in memory; a restore must stream.
    proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=errfile,
        env=dict(os.environ, **secrets),
    )
    proc.errfile = errfile
    proc.cmd = cmd
    return proc


def read_stderr(proc, limit=4000):
    proc.errfile.seek(0)
    text = proc.errfile.read().decode("utf-8", "replace")
    proc.errfile.close()
    return text[-limit:]
