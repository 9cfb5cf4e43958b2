"""Make the checkout importable as ansible_collections.qadhya.dbops for pytest.

`make venv` links the checkout under .cache/collections; ansible-test units
sets the path up on its own, so this only adds what is missing.
"""

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".cache" / "collections"
if COLLECTIONS.is_dir() and str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
