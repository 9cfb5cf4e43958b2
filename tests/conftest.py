"""Order test files longest first, so that the workers of `make test` finish together.

`make test` hands whole files to its workers (`--dist loadfile`, each file's
lab instances are its own) in collection order (`--no-loadscope-reorder`;
xdist would otherwise start with the files holding the most tests, which are
the quick unit files, and leave a two-minute integration file for the end
while the other worker idles). Files are sorted by their time in the last
recorded run, `tests/durations.json`; a file it does not know yet counts as
`UNKNOWN_S` (a unit file, `UNIT_S`). Set QADHYA_RECORD_DURATIONS=<path> to write this run's times
per file there (setup, call and teardown of every test, summed).
"""

import json
import os
from collections import defaultdict
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent / "durations.json"
# A new file is most likely an integration file of average length.
UNKNOWN_S = 60.0
UNIT_S = 1.0


def _file_of(nodeid):
    return nodeid.split("::", 1)[0]


def _known_durations():
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pytest_collection_modifyitems(session, config, items):
    known = _known_durations()
    # sort() is stable: the tests of one file keep their order.

    def seconds(item):
        name = _file_of(item.nodeid)
        return known.get(name, UNIT_S if name.startswith("tests/unit/") else UNKNOWN_S)

    items.sort(key=lambda item: -seconds(item))


_recorded = defaultdict(float)


def pytest_runtest_logreport(report):
    # Under xdist the controller sees every worker's reports; a worker's own
    # copy is not recorded (it has workerinput), so each report counts once.
    _recorded[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session):
    target = os.environ.get("QADHYA_RECORD_DURATIONS")
    if not target or hasattr(session.config, "workerinput") or not _recorded:
        return
    data = {name: round(seconds, 1) for name, seconds in sorted(_recorded.items())}
    Path(target).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
