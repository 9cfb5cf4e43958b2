# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How an error is shown to a person (private).

psycopg2, Docker and OS errors often span several lines (DETAIL, HINT, a
traceback-like context); a task failure shows only the first one, which
names the problem.
"""

from __future__ import annotations


def first_line(error, default=None):
    """The first non-blank line of `error` (an exception or a text).

    An exception without a message is named by its class, so the result is
    never empty; `default` replaces that name when given.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    if default is not None:
        return default
    return error.__class__.__name__ if isinstance(error, BaseException) else ""
