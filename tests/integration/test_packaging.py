"""The collection as operators get it: a built tarball, installed into a fresh
virtualenv, used by its FQCN with no help from the checkout.

One session builds the tarball, creates one fresh virtualenv with the pinned
ansible-core + ansible (which bundles community.postgresql and
community.docker) + psycopg2-binary + requests (what a Docker host needs),
and installs the tarball into a temporary collections path. Every command
then runs from a temporary directory with an empty ansible.cfg, so nothing
resolves through the checkout's `.cache/collections` link. The execution environment definition is checked
with ansible-builder's `create` step (building the image needs a registry).
"""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAB_PY = REPO / "lab" / "lab.py"
INSTANCE = os.environ.get("QADHYA_IT_PREFIX", "") + "pkg"
VENV_BIN = Path(sys.executable).parent


def galaxy_version():
    return yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]


def pins(*names):
    """Exact `name==version` lines of requirements.txt for the given names."""
    found = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name = line.split("==", 1)[0].strip().lower()
            if name in names:
                found[name] = line
    assert set(found) == set(names), f"requirements.txt lacks pins for {set(names) - set(found)}"
    return [found[n] for n in names]


def run(cmd, *, cwd, env=None, timeout=600):
    """Run cmd; with env, the inherited ANSIBLE_* settings are dropped first."""
    full_env = dict(os.environ)
    if env is not None:
        full_env = {k: v for k, v in full_env.items() if not k.startswith("ANSIBLE_")}
        full_env.pop("VIRTUAL_ENV", None)
        full_env.update(env)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout, check=False)


def lab(*args):
    proc = run([sys.executable, LAB_PY, *args], cwd=REPO, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"lab.py {' '.join(map(str, args))} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = run([VENV_BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", out, REPO],
               cwd=out)
    assert proc.returncode == 0, proc.stderr
    path = out / f"qadhya-dbops-{galaxy_version()}.tar.gz"
    assert path.is_file(), proc.stdout
    return path


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtualenv with only the runtime pins: what an operator installs."""
    python = run([REPO / ".ci" / "find-python"], cwd=REPO).stdout.strip()
    assert python, "no Python 3.12+ found by .ci/find-python"
    venv = tmp_path_factory.mktemp("venv") / "venv"
    proc = run([python, "-m", "venv", venv], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    proc = run([venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check",
                *pins("ansible-core", "ansible", "psycopg2-binary", "requests")], cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where commands run: no ansible.cfg but an empty one, no checkout nearby."""
    work = tmp_path_factory.mktemp("work")
    (work / "ansible.cfg").write_text("[defaults]\n")
    return work


@pytest.fixture(scope="module")
def installed(tarball, fresh_venv, workdir):
    """(collections path, env) with the tarball installed into a temporary path."""
    collections = workdir / "collections"
    env = {"ANSIBLE_CONFIG": str(workdir / "ansible.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(collections),
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{fresh_venv / 'bin'}:{os.environ['PATH']}"}
    proc = run([fresh_venv / "bin" / "ansible-galaxy", "collection", "install", tarball, "-p", collections],
               cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The dependencies come from the `ansible` package, not from Galaxy.
    assert "qadhya.dbops:" + galaxy_version() + " was installed successfully" in proc.stdout
    return collections, env


@pytest.fixture(scope="module")
def pkg_lab():
    """Our own lab instance in the incident state, removed at the end."""
    docker = run(["docker", "version", "--format", "{{.Server.Version}}"], cwd=REPO)
    if docker.returncode != 0:
        pytest.fail("no Docker engine answers; the integration tests need one")
    port = run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                "print(s.getsockname()[1])"], cwd=REPO).stdout.strip()
    lab("up", "--instance", INSTANCE, "--port", port)
    yield json.loads(lab("env", "--instance", INSTANCE))
    run([sys.executable, LAB_PY, "down", "--instance", INSTANCE], cwd=REPO, timeout=300)


def test_tarball_holds_the_collection_and_nothing_local(tarball):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    tops = {n.split("/", 1)[0] for n in names}
    for wanted in ("MANIFEST.json", "FILES.json", "README.md", "plugins", "roles", "playbooks",
                   "migrations", "meta", "docs"):
        assert wanted in tops, wanted
    assert "meta/runtime.yml" in names
    assert "playbooks/consolidate.yml" in names
    modules = sorted(p.name for p in (REPO / "plugins" / "modules").glob("*.py") if p.name != "__init__.py")
    assert modules and all(f"plugins/modules/{m}" in names for m in modules)
    for role in (p.name for p in (REPO / "roles").iterdir() if p.is_dir()):
        assert f"roles/{role}/meta/argument_specs.yml" in names, role
    for local in (".venv", ".cache", ".git", "reports", ".pytest_cache", ".ruff_cache",
                  "lab", "molecule", "tests", "bench", "Makefile", "requirements.txt"):
        assert local not in tops, local
    assert not [n for n in names if n.endswith("vault-password.example.txt")]
    for runtime in ("meta/execution-environment.yml", "meta/requirements.txt", "meta/bindep.txt"):
        assert runtime in names, runtime
    assert not [n for n in names if n.startswith("lab/.state") or "__pycache__" in n or n.endswith(".pyc")]


def test_ansible_doc_lists_and_documents_every_module(installed, fresh_venv, workdir):
    collections, env = installed
    modules = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.name != "__init__.py")
    proc = run([fresh_venv / "bin" / "ansible-doc", "-l", "qadhya.dbops"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    listed = sorted(line.split()[0].removeprefix("qadhya.dbops.") for line in proc.stdout.splitlines()
                    if line.startswith("qadhya.dbops."))
    assert listed == modules
    for module in modules:
        fqcn = f"qadhya.dbops.{module}"
        proc = run([fresh_venv / "bin" / "ansible-doc", "--json", fqcn], cwd=workdir, env=env)
        assert proc.returncode == 0, proc.stderr
        entry = json.loads(proc.stdout)[fqcn]
        doc = entry["doc"]
        assert str(collections) in doc["filename"], "documented from the installed copy"
        assert doc["short_description"] and doc["description"] and doc["author"], module
        assert all(opt.get("description") for opt in doc["options"].values()), module
        assert fqcn in entry["examples"], f"{module}: EXAMPLES use the FQCN"
        assert entry["return"], f"{module}: RETURN documented"
        text = run([fresh_venv / "bin" / "ansible-doc", fqcn], cwd=workdir, env=env)
        assert text.returncode == 0 and "EXAMPLES" in text.stdout, module
    roles = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
    proc = run([fresh_venv / "bin" / "ansible-doc", "-t", "role", "-l", "qadhya.dbops"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(re.findall(r"^qadhya\.dbops\.(\w+):", proc.stdout, re.M)) == roles


def test_consolidate_by_fqcn_from_the_installed_collection(installed, fresh_venv, workdir, pkg_lab,
                                                             tmp_path):
    collections, env = installed
    python = fresh_venv / "bin" / "python"
    installed_root = collections / "ansible_collections" / "qadhya" / "dbops"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(python),
        "dbops_env_file": pkg_lab["env_file"],
        "dbops_db_container": pkg_lab["db_container"],
        "dbops_app_container": pkg_lab["app_container"],
        "dbops_target_db": "qadhya",
        "dbops_health_url": pkg_lab["health_url"],
        "dbops_backup_dir": str(tmp_path / "backups"),
        # The migrations shipped inside the tarball.
        "dbops_migrations_dir": str(installed_root / "migrations"),
        "dbops_report_dir": str(tmp_path / "reports"),
    }
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"pkg-lab": host}}}))

    proc = run([fresh_venv / "bin" / "ansible-playbook", "qadhya.dbops.consolidate", "-i", inventory],
               cwd=workdir, env=env, timeout=900)
    out = proc.stdout
    failures = [line for line in out.splitlines() if line.startswith(("fatal:", "failed:", "[ERROR]"))]
    assert proc.returncode == 0, "\n".join(failures) + out[-5000:] + proc.stderr[-2000:]
    assert re.search(r"pkg-lab\s+: ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0", out), out[-3000:]
    # The summary table is the last thing printed before the recap.
    assert re.search(r"pkg-lab: SUCCESS\s+moncabinet -> qadhya", out), out[-3000:]
    assert pkg_lab["db_password"] not in out + proc.stderr

    dbs = run(["docker", "exec", pkg_lab["db_container"], "psql", "-U", pkg_lab["db_user"], "-d", "postgres",
               "-XAtc", "SELECT datname FROM pg_database ORDER BY 1"], cwd=workdir)
    assert dbs.stdout.split() == ["postgres", "qadhya", "template0", "template1"]
    status = json.loads(lab("status", "--instance", INSTANCE, "--json"))
    health = run([python, "-c", "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=5); "
                  "print(r.status, r.read().decode())", pkg_lab["health_url"]], cwd=workdir)
    code, body = health.stdout.split(" ", 1)
    assert code == "200", (health.stdout, health.stderr, status)
    body = json.loads(body)
    assert body["database"] == "qadhya" and body["documents"] == 580
    reports = sorted((tmp_path / "reports").glob("pkg-lab-*.json"))
    assert reports and json.loads(reports[-1].read_text())["result"] == "success"


def test_module_defaults_group_sets_the_connection_once(installed, fresh_venv, workdir, pkg_lab, tmp_path):
    """`group/qadhya.dbops.postgresql` in module_defaults reaches every module of the group."""
    collections, env = installed
    playbook = tmp_path / "group.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "One connection for the group",
        "hosts": "all",
        "gather_facts": False,
        "module_defaults": {"group/qadhya.dbops.postgresql": {
            "db_container": pkg_lab["db_container"], "login_user": pkg_lab["db_user"],
            "login_password": "{{ lab_password }}"}},
        "tasks": [
            {"name": "Count the app's database", "register": "info",
             "qadhya.dbops.db_info": {"databases": ["qadhya"]}},
            {"name": "Rehearse the rename the consolidation did", "register": "rename", "check_mode": True,
             "qadhya.dbops.db_rename": {"name": "moncabinet", "target": "qadhya"}},
            {"name": "Show", "ansible.builtin.debug": {
                "msg": "{{ info.databases | list }} {{ rename.changed }}"}},
        ]}]))
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"pkg-lab": {
        "ansible_connection": "local", "ansible_python_interpreter": str(fresh_venv / "bin" / "python"),
        "lab_password": pkg_lab["db_password"]}}}}))
    proc = run([fresh_venv / "bin" / "ansible-playbook", playbook, "-i", inventory], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "['qadhya'] False" in proc.stdout, proc.stdout[-3000:]


def test_execution_environment_creates_a_build_context(tarball, installed, tmp_path):
    """`ansible-builder create` accepts the file; the context holds every dependency;
    the repository's requirements.txt (development tools) stays out of the image."""
    collections, _env = installed
    ee_text = (REPO / "execution-environment.yml").read_text()
    ee = yaml.safe_load(ee_text)
    assert ee["version"] == 3
    # The EE installs the tarball `make build` writes, at the galaxy.yml version.
    (tmp_path / "src" / ".cache" / "dist").mkdir(parents=True)
    (tmp_path / "src" / ".cache" / "dist" / tarball.name).write_bytes(tarball.read_bytes())
    (tmp_path / "src" / "execution-environment.yml").write_text(ee_text)
    context = tmp_path / "context"
    proc = run([VENV_BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", context],
               cwd=tmp_path / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # ansible-builder names it Containerfile for podman, Dockerfile for docker.
    containerfile = next(p for p in (context / "Containerfile", context / "Dockerfile")
                         if p.exists()).read_text()
    core_pin, = pins("ansible-core")
    assert core_pin in containerfile
    assert f"FROM {ee['images']['base_image']['name']}" in containerfile or \
        ee["images"]["base_image"]["name"] in containerfile
    build = context / "_build"
    assert (build / "dist" / tarball.name).read_bytes() == tarball.read_bytes()
    galaxy = yaml.safe_load((build / "requirements.yml").read_text())["collections"]
    names = [c["name"] for c in galaxy]
    assert f"/build/dist/{tarball.name}" in names
    assert {"community.postgresql", "community.docker"} <= set(names)

    # Run the context's own introspection over the installed collection, as the
    # image build does: the collection's runtime list comes out, not its dev tools.
    out_pip, out_bindep = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    proc = run([sys.executable, build / "scripts" / "introspect.py", "introspect", collections,
                "--write-pip", out_pip, "--write-bindep", out_bindep], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pip_lines = out_pip.read_text()
    for pin in pins("psycopg2-binary", "requests"):
        assert pin in pip_lines
    for dev_tool in ("pytest", "molecule", "ansible-lint", "ruff"):
        assert dev_tool not in pip_lines, dev_tool
    for entry in ("postgresql-client [platform:dpkg]", "docker.io [platform:dpkg]",
                  "postgresql [platform:rpm]", "openssh-clients [platform:rpm]"):
        assert entry in out_bindep.read_text()
    assert "postgresql-client" in out_bindep.read_text()
