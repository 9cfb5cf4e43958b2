"""docs/safety.md is the evidence an operator reads: every test it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(?:tests/[a-z/]+/)?(test_\w+\.py)::(test_\w+)(?:\[[^`]*\])?`")


def _named_tests():
    return NAMED.findall((ROOT / "docs" / "safety.md").read_text())


def test_safety_md_names_tests():
    assert len(_named_tests()) >= 40


def test_every_test_safety_md_names_exists():
    sources = {}
    missing = []
    for filename, name in _named_tests():
        found = list(ROOT.glob("tests/**/" + filename))
        if not found:
            missing.append(filename)
            continue
        text = sources.setdefault(filename, found[0].read_text())
        if not re.search(r"^def %s\(" % name, text, re.M):
            missing.append("%s::%s" % (filename, name))
    assert missing == []
