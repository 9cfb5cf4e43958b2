"""The test tree itself: pytest imports test files without packages, by basename."""

import json
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_basename():
    # Two files of one basename in one run fail collection ("import file mismatch").
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []


def test_the_recorded_durations_name_existing_test_files():
    # tests/durations.json orders the files of `make test`; a stale name would
    # silently stop ordering the file it was meant for.
    recorded = json.loads((TESTS / "durations.json").read_text())
    missing = [name for name in recorded if not (TESTS.parent / name).is_file()]
    assert missing == []
    assert all(isinstance(seconds, (int, float)) and seconds >= 0 for seconds in recorded.values())
