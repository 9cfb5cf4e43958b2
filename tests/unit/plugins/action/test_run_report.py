# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the run_report action: the files, their modes, check mode and a directory it cannot write."""

from __future__ import annotations

import json
import os
import stat
from unittest.mock import MagicMock

import pytest

from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.qadhya.dbops.plugins.action.run_report import ActionModule


def run(args, check_mode=False):
    task = MagicMock(async_val=0, check_mode=check_mode, args=args, action="run_report")
    templar = Templar(loader=DataLoader(), variables={})
    action = ActionModule(task, MagicMock(), MagicMock(), DataLoader(), templar, None)
    return action.run(task_vars={})


RECORD = {"host": "vps-1", "result": "success", "target": "qadhya", "note": "données",
          "rows": {"b": 2, "a": 1}}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_json_markdown_and_latest_private(tmp_path):
    base = tmp_path / "reports" / "check" / "vps-1-20261202T013000"
    result = run({"path": str(base), "record": RECORD, "markdown": "# Report\n\n", "latest": "vps-1"})
    assert result["changed"] is False and result["written"] is True
    latest = base.parent / "vps-1-latest.json"
    assert result["paths"] == [str(base) + ".json", str(base) + ".md", str(latest)]
    text = (base.parent / (base.name + ".json")).read_text(encoding="utf-8")
    assert json.loads(text) == RECORD and "données" in text and text.index('"a"') < text.index('"b"')
    assert latest.read_text(encoding="utf-8") == text
    assert (base.parent / (base.name + ".md")).read_text(encoding="utf-8") == "# Report\n"
    assert {mode(p) for p in result["paths"]} == {0o640} and mode(base.parent) == 0o750
    assert [p.name for p in base.parent.iterdir() if p.name.startswith(".")] == []


def test_check_mode_writes_nothing_and_names_the_files(tmp_path):
    base = tmp_path / "reports" / "vps-1-20261202T013000"
    result = run({"path": str(base), "record": RECORD, "markdown": "x"}, check_mode=True)
    assert result["written"] is False and result["json_path"] == str(base) + ".json"
    assert not (tmp_path / "reports").exists()


def test_a_directory_it_cannot_write_is_one_line_naming_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AnsibleActionFail) as raised:
        run({"path": str(blocker / "vps-1-1"), "record": RECORD, "markdown": "x"})
    message = str(raised.value)
    assert "cannot write the report" in message and "dbops_report_dir" in message and "\n" not in message
