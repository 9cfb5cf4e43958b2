"""The oldest ansible-core that meta/runtime.yml accepts, tested rather than claimed.

A Python 3.11 virtualenv holds tests/floor-requirements.txt (ansible 9.13.0:
ansible-core 2.16 and the community.docker / community.postgresql of its
time) plus the pins of requirements.txt that the plugins and their unit tests
import. It is built once and cached under ~/.cache/qadhya.dbops/ (outside the
checkout, so fresh clones share it), keyed by those pins and
the interpreter. With it: ansible-test sanity of that core (FLOOR_SANITY), the
unit tests of the plugins (tests/unit/plugins),
then a full consolidation of a lab instance and its idempotent rerun, driven
by that venv's ansible-playbook (the checkout is qadhya.dbops through
.cache/collections, as ansible.cfg says; the community collections are the
venv's own).
"""

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import labkit
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = labkit.REPO
FLOOR_REQUIREMENTS = REPO / "tests" / "floor-requirements.txt"
REQUIREMENTS = REPO / "requirements.txt"
# Outside the checkout: a fresh clone on a machine that built it once reuses it.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "qadhya.dbops"
# Tools of the newest venv that pull their own ansible-core (or are not needed to run the tests).
NOT_ON_THE_FLOOR = {"ansible", "ansible-core", "ansible-lint", "ansible-builder", "antsibull-changelog",
                    "molecule", "ruff", "pytest-xdist"}
# ansible-core 2.16 runs on Python 3.10-3.12 on the controller.
PYTHONS = ("3.11", "3.12")
INSTANCE = labkit.instance_name("floor")
# The sanity tests that say whether the collection works on the oldest core: the
# modules' documentation and argument specs against its schema (validate-modules,
# ansible-doc, action-plugin-docs), every plugin importable there (import) and
# compiled by its Pythons (compile), meta/runtime.yml as it reads it
# (runtime-metadata), and yamllint. Left to the pinned newest (tests/sanity/run.sh):
# pylint and pep8, which judge style with older tool versions, the Python 2
# boilerplate tests that 2.17 dropped (future-import-, metaclass-boilerplate),
# and the file-level checks that do not depend on the core's version.
FLOOR_SANITY = ("validate-modules", "import", "compile", "yamllint", "ansible-doc", "action-plugin-docs",
                "runtime-metadata")


def pins(path):
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def pin_name(pin):
    return re.split(r"[\[=<>!~ ]", pin, maxsplit=1)[0].lower()


def floor_pins():
    floor = pins(FLOOR_REQUIREMENTS)
    taken = NOT_ON_THE_FLOOR | {pin_name(p) for p in floor}
    return floor + [p for p in pins(REQUIREMENTS) if pin_name(p) not in taken]


def floor_python():
    """A Python 3.11 (else 3.12) by its real path: a pyenv shim would need PYENV_VERSION."""
    for version in PYTHONS:
        pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")
        candidates = sorted(glob.glob(pyenv))
        candidates += [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
        for path in candidates:
            if os.access(path, os.X_OK) and subprocess.run(
                    [path, "-c", "import venv, ensurepip"], capture_output=True, check=False).returncode == 0:
                return path
    pytest.fail("no Python 3.11 or 3.12 with venv found for the ansible-core floor "
                "(apt-get install python3.11-venv, or pyenv install 3.11)")


def version_of(python):
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def floor_venv():
    """The cached floor virtualenv's bin directory; built (a few minutes) when its pins changed."""
    python = floor_python()
    wanted = floor_pins()
    key = hashlib.sha256("\n".join([version_of(python), *wanted]).encode()).hexdigest()[:12]
    venv = CACHE / f"floor-venv-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "floor-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once: one builds, the other waits
        if not (venv / ".complete").exists():
            for stale in CACHE.glob("floor-venv-*"):
                shutil.rmtree(stale, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
                reqs.write("\n".join(wanted) + "\n")
                reqs.flush()
                proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                                       "--disable-pip-version-check", "-r", reqs.name],
                                      capture_output=True, text=True, check=False, timeout=1200)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail("installing the floor pins failed: " + proc.stderr.strip()[-2000:])
            (venv / ".complete").write_text("\n".join(wanted) + "\n")
    return venv / "bin"


def test_floor_venv_runs_the_declared_minimum(floor_venv):
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    floor = re.fullmatch(r">=(\d+\.\d+)\.\d+", runtime["requires_ansible"])
    assert floor, runtime["requires_ansible"]
    out = subprocess.run([str(floor_venv / "ansible"), "--version"], capture_output=True, text=True,
                         check=True, env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
                         cwd=REPO).stdout
    assert re.search(r"core %s\.\d+\]" % re.escape(floor.group(1)), out), out
    # The checkout is the qadhya.dbops this core sees, the community collections are its own.
    listing = subprocess.run([str(floor_venv / "ansible-galaxy"), "collection", "list"], capture_output=True,
                             text=True, check=True, cwd=REPO,
                             env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}).stdout
    assert re.search(r"^qadhya\.dbops\s", listing, re.M), listing
    assert re.search(r"^community\.docker\s+3\.", listing, re.M), listing
    assert re.search(r"^community\.postgresql\s+3\.", listing, re.M), listing


def test_sanity_passes_on_the_floor(floor_venv):
    # The tree copy of the newest core's sanity, kept apart (.cache/sanity-floor), run by this ansible-test.
    args = [arg for test in FLOOR_SANITY for arg in ("--test", test)]
    proc = subprocess.run(["bash", str(REPO / "tests" / "sanity" / "run.sh"), *args], capture_output=True,
                          text=True, cwd=REPO, check=False, timeout=1200,
                          env={**os.environ, "QADHYA_SANITY_VENV": str(floor_venv.parent)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ran = re.findall(r'^Running sanity test "([^"]+)"', proc.stdout, re.M)
    assert sorted(ran) == sorted(FLOOR_SANITY), ran


def test_plugin_unit_tests_pass_on_the_floor(floor_venv):
    # tests/unit/plugins: everything that imports ansible (tests/unit/ci checks shell scripts).
    proc = subprocess.run([str(floor_venv / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", "tests/unit/plugins"], capture_output=True, text=True, cwd=REPO,
                          check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-2000:]


@pytest.fixture(scope="module")
def floor_lab():
    inst = labkit.lab_up(INSTANCE)
    yield inst
    labkit.run_lab("down", "--instance", INSTANCE, check=False)


def run_floor_playbook(floor_venv, inventory):
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1", "PATH": f"{floor_venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(floor_venv / "ansible-playbook"), str(REPO / "playbooks" / "consolidate.yml"),
                           "-i", str(inventory)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900, check=False)


def test_consolidation_on_the_floor_core_then_idempotent(floor_venv, floor_lab, tmp_path):
    lab = floor_lab
    # Modules run with the floor venv's Python too: psycopg2 and requests come from there.
    # A generous health wait: this is about the core's version, not the machine's load.
    inventory = labkit.write_inventory(tmp_path / "inventory.json", {"lab-it": labkit.host_vars(
        lab.info, tmp_path, ansible_python_interpreter=str(floor_venv / "python"), dbops_health_timeout=180)})
    proc = run_floor_playbook(floor_venv, inventory)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    names = sorted(r[0] for r in lab.psql("postgres", "SELECT datname FROM pg_database"))
    assert names == ["postgres", "qadhya", "template0", "template1"]
    assert lab.psql("qadhya", "SELECT count(*) FROM knowledge_base") == [["580"]]
    assert lab.psql("qadhya", "SELECT count(*) FROM user_validation_stats") == [["2"]]
    status, body = lab.health()
    assert status == 200 and body["database"] == "qadhya" and body["documents"] == 580
    report = json.loads(sorted((tmp_path / "reports").glob("lab-it-*.json"),
                               key=lambda p: p.stat().st_mtime)[-1].read_text())
    assert report["result"] == "success" and report["counts_after"] == report["counts_before"]
    assert lab.info["db_password"] not in proc.stdout

    again = run_floor_playbook(floor_venv, inventory)
    assert again.returncode == 0, again.stdout[-4000:]
    match = re.search(r"lab-it\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", again.stdout)
    assert match and match.group(1) == "0", again.stdout[-4000:]

