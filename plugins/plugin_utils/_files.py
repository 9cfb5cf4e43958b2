# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files the controller-side actions write (run reports, dashboard pages): whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile


def write_text(path, text, mode=0o640, dir_mode=0o750):
    """Write `text` to `path` through a temp file and a rename: a reader never sees half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, data, mode=0o640):
    """`data` as JSON (str: as it is), keys sorted, non-ASCII kept."""
    write_text(path, data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True,
                                                                   ensure_ascii=False) + "\n", mode)
