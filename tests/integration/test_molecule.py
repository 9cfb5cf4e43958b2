"""Every molecule scenario under molecule/ runs its full test sequence on its own lab instance.

Each scenario brings up and removes its own lab instance (names `mol-*`,
ports 3871-3874, see each molecule.yml), so these tests share nothing with
the session fixture's instance.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


def test_scenarios_are_found():
    assert {"default", "check", "rollback", "created_mode"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    venv_bin = Path(sys.executable).parent
    if not (REPO / ".cache/collections/ansible_collections/qadhya/dbops").exists():
        pytest.fail("the checkout is not exposed as qadhya.dbops; run `make venv` first")
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
        "PY_COLORS": "0",
    }
    env.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    proc = subprocess.run([str(venv_bin / "molecule"), "test", "-s", scenario], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert "failed=1" not in output.split("SCENARIO RECAP")[-1]
