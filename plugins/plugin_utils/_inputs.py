# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Checks of the collection-wide dbops_* variables against their one documented list.

Pure functions on plain values, so they are unit-tested without Ansible
running; the action plugin qadhya.dbops.validate_inputs feeds them the
host's templated variables.
"""

import difflib
import re
from pathlib import Path

import yaml

from ansible.module_utils.common.validation import (
    check_type_bool,
    check_type_dict,
    check_type_float,
    check_type_int,
    check_type_list,
)

PREFIX = "dbops_"

# The list lives in a role's argument spec so that ansible-doc shows it and
# ansible-lint checks its schema; this file sits in plugins/plugin_utils/.
SPEC_PATH = Path(__file__).resolve().parents[2] / "roles" / "inputs" / "meta" / "argument_specs.yml"

# Facts the playbooks build as they run. An inventory or -e value of the same
# name would win over set_fact and silently replace the run's own record.
RESERVED = {
    "dbops_run": "consolidate.yml's run record",
    "dbops_job": "the run record of check, backup, migrate and restore",
}

_ARTICLE = {"int": "an int", "float": "a number", "bool": "a boolean (true/false)", "list": "a list",
            "dict": "a dict", "str": "a string", "path": "a path (a string)"}


def load_spec(path=SPEC_PATH):
    """{name: option spec} of the documented dbops_* variables."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def is_input_name(name):
    """Whether a variable name is one this check judges (any case, so DBOPS_X is caught too)."""
    return isinstance(name, str) and name.lower().startswith(PREFIX)


def suggestion(name, known):
    """The closest documented name, or None.

    Compared without the shared prefix, which would otherwise make every
    short name look close to every other one.
    """
    tails = {k[len(PREFIX):]: k for k in known}
    tail = name.lower()[len(PREFIX):] if is_input_name(name) else name.lower()
    best = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.6)
    return tails[best[0]] if best else None


def is_empty(value):
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (list, dict)) and not value


def _convert_scalar(kind, value):
    """The value as type ``kind``; TypeError when it is not one."""
    if kind in ("str", "path"):
        # Numbers are fine (a YAML `dbops_target_db: 2026`); a list or a
        # dict turned into its repr would only fail later, far from here.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(value)
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise TypeError(value)
        return check_type_int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError(value)
        return check_type_float(value)
    if kind == "bool":
        return check_type_bool(value)
    if kind == "dict":
        return check_type_dict(value)
    if kind == "list":
        return check_type_list(value)
    return value


def _shown(value, secret):
    return "a %s" % type(value).__name__ if secret else "%r" % (value,)


def type_problem(name, spec, value):
    """One line saying why ``value`` does not fit ``spec``, or None."""
    kind = spec.get("type", "str")
    secret = bool(spec.get("no_log"))
    try:
        converted = _convert_scalar(kind, value)
    except (TypeError, ValueError):
        return "%s must be %s, got %s; fix its value" % (
            name, _ARTICLE.get(kind, kind), _shown(value, secret))
    if kind == "list" and spec.get("elements"):
        for index, item in enumerate(converted):
            try:
                _convert_scalar(spec["elements"], item)
            except (TypeError, ValueError):
                return "%s must be a list of %s values, item %d is %s; fix its value" % (
                    name, spec["elements"], index, _shown(item, secret))
    choices = spec.get("choices")
    if choices and converted not in choices:
        return "%s must be one of %s, got %s" % (name, ", ".join(map(str, choices)), _shown(value, secret))
    return None


def _first_sentence(description):
    """What the variable is, short enough for one line: its description's first sentence, no asides."""
    text = description[0] if isinstance(description, list) else (description or "")
    text = re.sub(r"\b[BCIMOPVU]\(([^()]*)\)", r"\1", " ".join(text.split()))  # C(x) and co: plain x
    text = text.split(". ", maxsplit=1)[0].rstrip(".")
    return re.sub(r"\s*\([^()]*\)", "", text)


def unknown_problem(name, known):
    if name in RESERVED:
        return "%s is %s, set by the playbook itself, not an input; remove it from the inventory or -e" % (
            name, RESERVED[name])
    best = suggestion(name, known)
    if best:
        return "unknown variable %s; did you mean %s? (rename it where it is set)" % (name, best)
    return "unknown variable %s: not a qadhya.dbops input (ansible-doc -t role qadhya.dbops.inputs lists " \
           "them); remove it or fix its name" % name


def missing_problem(name, spec, value_set, playbook):
    state = "empty" if value_set else "not set"
    return "%s is required by %s but %s: set it in the inventory or with -e (%s)" % (
        name, playbook, state, _first_sentence(spec.get("description")))


def check_required_names(spec, required):
    """The required names that are not in the list (a mistake in the playbook, not the inventory)."""
    return sorted(set(required) - set(spec))


def find_problems(spec, values, required=(), playbook="this playbook", unresolved=None):
    """Every problem with a host's dbops_* variables, one line each.

    ``values`` maps each dbops_* variable the host has to its templated
    value; ``unresolved`` maps those whose template failed to the error's
    first line. Unknown names come first (a typo explains a missing value
    further down), then bad values, then missing required ones.
    """
    unresolved = unresolved or {}
    present = set(values) | set(unresolved)
    unknown = sorted(n for n in present if n not in spec)
    problems = [unknown_problem(n, spec) for n in unknown]
    for name in sorted(present - set(unknown)):
        if name in unresolved:
            problems.append("%s cannot be resolved (%s); fix its value or define what it refers to"
                            % (name, unresolved[name]))
            continue
        value = values[name]
        if value is None:
            continue
        # An empty string for a str or path is "not set", judged below.
        if spec[name].get("type", "str") in ("str", "path") and is_empty(value):
            continue
        problem = type_problem(name, spec[name], value)
        if problem:
            problems.append(problem)
    for name in required:
        if name in unresolved:
            continue
        if name not in values or is_empty(values[name]):
            problems.append(missing_problem(name, spec[name], name in values, playbook))
    return problems
