# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_report
short_description: Write a playbook run's report, as JSON and Markdown, on the controller
version_added: 0.3.0
author: qadhya platform team (@qadhya)
description:
  - Writes O(record) as JSON to C(<path>.json) and O(markdown) to C(<path>.md), and with O(latest) a
    copy of the JSON to C(<directory of path>/<latest>-latest.json), the stable name dashboards and
    monitoring read.
  - Each file is written whole through a temporary file and a rename, mode C(0640); a missing
    directory is created C(0750).
  - Runs on the controller and never connects to a host (it is an action plugin). The playbooks pass
    the report's path from the P(qadhya.dbops.report_base#filter) filter and render the Markdown with
    a C(template) lookup.
extends_documentation_fragment:
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
options:
  path:
    description: The report's path on the controller without its extension.
    type: path
    required: true
  record:
    description: The run record, written as JSON with sorted keys.
    type: dict
    required: true
  markdown:
    description: The report for people, as Markdown.
    type: str
    required: true
  latest:
    description: Also write the JSON as C(<latest>-latest.json) beside the report, usually the host's name.
    type: str
notes:
  - This is an action plugin; it needs no Python or connection on the managed hosts.
  - Check mode writes nothing; the result still names the files.
  - A report is a run record, not managed state, so C(changed) is always false and a repeated run still
    reports C(changed=0).
"""

EXAMPLES = r"""
- name: Report | Write the report files
  qadhya.dbops.run_report:
    path: "{{ dbops_job | qadhya.dbops.report_base(dbops_report_dir, 'check') }}"
    record: "{{ dbops_job }}"
    markdown: "{{ lookup('ansible.builtin.template', 'check_report.md.j2') }}"
    latest: "{{ inventory_hostname }}"
  delegate_to: localhost
"""

RETURN = r"""
json_path:
  description: The JSON report.
  returned: always
  type: str
  sample: /var/lib/qadhya.dbops/reports/check/vps-1-20261202T013000Z.json
markdown_path:
  description: The Markdown report.
  returned: always
  type: str
paths:
  description: Every file written (or that would be, in check mode).
  returned: always
  type: list
  elements: str
written:
  description: Whether the files were written (false in check mode).
  returned: always
  type: bool
"""
