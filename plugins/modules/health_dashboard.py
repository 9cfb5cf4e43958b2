# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_dashboard
short_description: Keep the check history and write one static HTML health page per environment
version_added: 0.3.0
author: qadhya platform team (@qadhya)
description:
  - Writes each of O(records) (the check records C(check.yml) builds, one per host) to
    C(<report_dir>/history/<host>-<UTC stamp>.json), deletes the records of O(hosts) older than
    O(history_days) (never a host's newest), then renders C(<report_dir>/dashboard/<environment>.html)
    from the history of every host of O(hosts).
  - The page shows the overall status, then every problem as a sentence, critical first, then one card
    per host - red hosts first - with its checks, its database size and row counts over time (small
    inline SVG charts; nothing is loaded from the network), the age, size and verification of its
    newest backup and of its off-host copy when the record has one, its last disaster-recovery drill
    (the newest C(<drill_dir>/<host>-<UTC stamp>.json) record - status, recovery time, data age,
    tables checked) and its pending migrations.
  - A host of O(hosts) without any record is shown red, as not checked.
  - A failed drill is critical, a drill older than 8 days is a warning.
  - Runs on the controller and never connects to a host (it is an action plugin).
options:
  report_dir:
    description: The report directory (C(dbops_report_dir)) on the controller.
    type: path
    required: true
  environment:
    description: Name of the page, usually the inventory's name (C(dbops_environment)).
    type: str
    required: true
  hosts:
    description: Every host the page shows, the play's hosts.
    type: list
    elements: str
    required: true
  records:
    description: This run's check records, added to the history first.
    type: list
    elements: dict
    default: []
  history_days:
    description: Days of history kept and drawn.
    type: int
    default: 90
  drill_dir:
    description: Directory of the drill records; defaults to C(<report_dir>/drill).
    type: path
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
notes:
  - This is an action plugin; it needs no Python or connection on the managed hosts.
  - Check mode writes nothing; the result still says what the page would show.
  - The history and the page are run records, not managed state, so C(changed) is always false.
"""

EXAMPLES = r"""
- name: Report | Write the history and the dashboard
  qadhya.dbops.health_dashboard:
    report_dir: /var/lib/qadhya.dbops/reports
    environment: prod
    hosts: "{{ ansible_play_hosts_all }}"
    records: "{{ ansible_play_hosts | map('extract', hostvars, 'dbops_job') | list }}"
  run_once: true
"""

RETURN = r"""
path:
  description: The page (written unless in check mode).
  returned: always
  type: str
  sample: /var/lib/qadhya.dbops/reports/dashboard/prod.html
history:
  description: The history records written for O(records).
  returned: always
  type: list
  elements: str
pruned:
  description: File names of the history records deleted as older than O(history_days).
  returned: always
  type: list
  elements: str
status:
  description: The worst status of all hosts (C(ok), C(warning), C(critical), C(unknown)).
  returned: always
  type: str
  sample: critical
hosts:
  description: The status of each host on the page.
  returned: always
  type: dict
  sample: {db1: critical, db2: ok}
problems:
  description: What the page lists as wrong, one line each, critical first within each host.
  returned: always
  type: list
  elements: str
  sample: ["db1 backup: no verified backup of qadhya in /srv/backups; run backup.yml"]
msg:
  description: One line naming the page and each host's status.
  returned: always
  type: str
"""
