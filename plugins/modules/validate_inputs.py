# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: validate_inputs
short_description: Check a host's dbops_* variables before a playbook changes anything
version_added: 0.2.0
author: qadhya platform team (@qadhya)
description:
  - Checks every variable whose name starts with C(dbops_) that the host has - from the inventory,
    C(group_vars), C(host_vars), play vars or C(-e) extra vars - against the one documented list of
    the collection's inputs, the argument spec of the role C(qadhya.dbops.inputs)
    (C(ansible-doc -t role qadhya.dbops.inputs) prints it).
  - Fails, naming each variable and the fix on a line of its own, when a C(dbops_*) variable is not
    in the list (with the closest documented name, for example
    C(unknown variable dbops_target_dbb; did you mean dbops_target_db?)), when a value has the wrong
    type or is not one of its choices, when a value cannot be templated, or when a variable listed in
    O(required) is missing or empty.
  - C(dbops_run) and C(dbops_job) are refused as inputs - the playbooks build them as they run, and an
    extra var of that name would silently replace the run's own record.
  - Runs on the controller and never connects to the host, so it is meant as the first task of a
    playbook, before anything else runs.
options:
  required:
    description:
      - The C(dbops_*) variables this playbook cannot run without. Each must be a documented name.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.INFO
notes:
  - This is an action plugin; it needs no Python or connection on the managed host.
"""

EXAMPLES = r"""
- name: Pre-check | Validate the dbops_* variables
  qadhya.dbops.validate_inputs:
    required: [dbops_env_file, dbops_db_container, dbops_backup_dir]
"""

RETURN = r"""
msg:
  description:
    - On failure, a count line then one line per problem, each naming the variable and the fix.
  returned: always
  type: str
  sample: |-
    1 problem with the dbops_* variables, nothing was run:
    unknown variable dbops_target_dbb; did you mean dbops_target_db? (rename it where it is set)
checked:
  description: The C(dbops_*) variables the host has, all valid.
  returned: success
  type: list
  elements: str
  sample: [dbops_backup_dir, dbops_db_container, dbops_env_file]
"""
