"""Make the checkout importable as ansible_collections.qadhya.dbops for pytest
(tests/unit itself, holding the shared test helpers, is put on sys.path by
pytest for this conftest).

`make venv` links the checkout under .cache/collections; ansible-test units
sets the path up on its own, so this only adds what is missing.
"""

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".cache" / "collections"
if COLLECTIONS.is_dir() and str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
