"""The bootstrap script (.ci/bootstrap) run with a fake PATH: only the tools
put there exist, `docker`, `id` and `apt-get` are stubs that answer as told
and log what they were asked."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / ".ci" / "bootstrap"
SHELL_SCRIPTS = [ROOT / ".ci" / "run", SCRIPT, ROOT / ".ci" / "find-python",
                 *sorted((ROOT / "lab" / "images").glob("*.sh"))]
REAL_TOOLS = ("awk", "dirname", "mktemp", "seq", "sleep", "tail", "rm", "cat")


def stub(path, body):
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake(tmp_path):
    """Build a PATH of stubs; returns run(present, uid, engine, compose, apt)."""
    def run(*args, present=("dockerd", "docker", "debootstrap", "make", "git"), uid=0,
            engine=True, compose=True, apt=True):
        bin_dir = tmp_path / "bin"
        shutil.rmtree(bin_dir, ignore_errors=True)
        bin_dir.mkdir()
        for tool in REAL_TOOLS:
            os.symlink(shutil.which(tool), bin_dir / tool)
        log = tmp_path / "calls.log"
        log.write_text("")
        stub(bin_dir / "id", f'echo {uid}')
        for tool in present:
            if tool == "docker":
                stub(bin_dir / "docker", f'echo "docker $*" >>{log}\n'
                     f'case "$1" in info) exit {0 if engine else 1};; '
                     f'compose) exit {0 if compose else 1};; esac')
            else:
                stub(bin_dir / tool, f'echo "{tool} $*" >>{log}')
        if apt:
            stub(bin_dir / "apt-get", f'echo "apt-get $*" >>{log}')
        proc = subprocess.run(["/bin/bash", str(SCRIPT), *args], capture_output=True, text=True, check=False,
                              env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, timeout=30)
        calls = [line for line in log.read_text().splitlines() if not line.startswith("docker ")]
        return proc, calls
    return run


def test_warm_machine_installs_nothing(fake):
    proc, calls = fake("--check")
    assert (proc.returncode, proc.stderr) == (0, "bootstrap: nothing to install\n")
    proc, calls = fake()
    assert (proc.returncode, proc.stderr, calls) == (0, "", [])


def test_check_lists_what_is_missing(fake):
    proc, calls = fake("--check", "shellcheck", present=("docker", "make"), engine=False, compose=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        "bootstrap: would do: apt: docker.io debootstrap git shellcheck; docker-compose v2 plugin "
        "from Debian trixie into /usr/libexec/docker/cli-plugins; start dockerd\n")
    assert calls == []


def test_not_root_stops_with_one_line(fake):
    proc, calls = fake(present=("make", "git"), uid=1000)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "run as root" in proc.stderr and "docker.io debootstrap" in proc.stderr
    assert calls == []


def test_not_debian_stops_with_one_line(fake):
    proc, calls = fake(present=("dockerd", "docker", "debootstrap", "make"), apt=False)
    assert proc.returncode == 1
    assert proc.stderr == "bootstrap: not a Debian/apt machine: install git yourself, then rerun\n"


def test_compose_missing_as_non_root(fake):
    proc, _calls = fake(uid=1000, compose=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Docker Compose v2 plugin" in proc.stderr


def test_installs_only_what_is_missing_with_one_update(fake):
    proc, calls = fake("shellcheck", present=("dockerd", "docker", "debootstrap", "git"))
    assert proc.returncode == 0, proc.stderr
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends make shellcheck"]


def test_engine_not_answering_as_non_root(fake):
    proc, _calls = fake(uid=1000, engine=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no Docker engine answers" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck (.ci/run installs it)")
def test_shell_scripts_pass_shellcheck():
    proc = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout
