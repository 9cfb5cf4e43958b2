# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Every module of the collection supports check mode; the ones that
    # edit files also show a diff. Modules extend with the fragment they fit.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
"""

    # A module that only reads (an _info module): changed is always false.
    INFO = r"""
attributes:
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) with --diff.
    support: none
    details: The module changes nothing, so there is no diff.
"""

    # A module that changes things but has nothing file-like to diff.
    NO_DIFF = r"""
attributes:
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) with --diff.
    support: none
"""

    # A module whose change is a file edit, shown as a diff.
    DIFF = r"""
attributes:
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) with --diff.
    support: full
"""

    # The undo journal option of the modules that change things.
    JOURNAL = r"""
options:
  journal:
    description:
      - Path, on the Docker host, of the run's undo journal (written by M(qadhya.dbops.run_journal)).
      - Every change this module makes is appended to it as it is made, also when the module
        fails halfway, so that a rollback knows exactly what to undo.
      - Nothing is written in check mode or when this is empty.
    type: path
"""
