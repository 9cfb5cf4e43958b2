# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the dbops_* input checks (plugin_utils._inputs) and their one list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _inputs as inputs

REPO = Path(__file__).resolve().parents[4]
SPEC = inputs.load_spec()
APP_SPECIFIC = ("dbops_env_file", "dbops_db_container", "dbops_app_container", "dbops_target_db",
                "dbops_health_url", "dbops_backup_dir")
ALL_APP = list(APP_SPECIFIC)


def problems(values, required=(), **kw):
    return inputs.find_problems(SPEC, values, required, "consolidate.yml", **kw)


def valid(**extra):
    return {"dbops_env_file": "/srv/app/.env", "dbops_db_container": "pg", "dbops_app_container": "web",
            "dbops_target_db": "shop", "dbops_health_url": "http://127.0.0.1:8080/health",
            "dbops_backup_dir": "/srv/backups", **extra}


def test_a_complete_valid_set_has_no_problem():
    assert problems(valid(dbops_health_timeout="90", dbops_backup_prune="no",
                          dbops_expected_tables="users,orders"), ALL_APP) == []


@pytest.mark.parametrize("typo, meant", [
    ("dbops_target_dbb", "dbops_target_db"),
    ("dbops_targetdb", "dbops_target_db"),
    ("dbops_envfile", "dbops_env_file"),
    ("DBOPS_TARGET_DB", "dbops_target_db"),
    ("dbops_retention_days", "dbops_backup_retention_days"),
    ("dbops_app_contianer", "dbops_app_container"),
])
def test_unknown_name_names_the_closest_known_one(typo, meant):
    found = problems(valid(**{typo: "x"}))
    assert found == ["unknown variable %s; did you mean %s? (rename it where it is set)" % (typo, meant)]


def test_unknown_name_far_from_any_gets_the_list_pointer():
    (line,) = problems(valid(dbops_zzqqxx="1"))
    assert line.startswith("unknown variable dbops_zzqqxx: not a qadhya.dbops input")
    assert "ansible-doc -t role qadhya.dbops.inputs" in line


def test_the_run_records_are_not_inputs():
    found = problems(valid(dbops_run={}, dbops_job="x"))
    assert len(found) == 2
    assert all("set by the playbook itself, not an input" in line for line in found)


def test_a_typo_explains_the_missing_value_after_it():
    values = valid(dbops_target_dbb="mydata")
    del values["dbops_target_db"]
    assert problems(values, ALL_APP) == [
        "unknown variable dbops_target_dbb; did you mean dbops_target_db? (rename it where it is set)",
        "dbops_target_db is required by consolidate.yml but not set: set it in the inventory or with -e "
        "(The database name the app's data must end under)",
    ]


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_required_but_empty_is_reported(empty):
    (line,) = problems(valid(dbops_env_file=empty), ["dbops_env_file"])
    assert line.startswith("dbops_env_file is required by consolidate.yml but empty: set it in the inventory")


def test_every_missing_required_is_reported_once():
    found = problems({}, ALL_APP)
    assert [line.split()[0] for line in found] == ALL_APP


def test_optional_empty_values_are_fine():
    assert problems(valid(dbops_source_db="", dbops_migrations_dir="", dbops_report_dir=None)) == []


@pytest.mark.parametrize("name, value, words", [
    ("dbops_health_timeout", "soon", "dbops_health_timeout must be an int, got 'soon'"),
    ("dbops_health_timeout", True, "must be an int"),
    ("dbops_health_timeout", "", "must be an int, got ''"),
    ("dbops_backup_prune", "perhaps", "dbops_backup_prune must be a boolean"),
    ("dbops_backup_max_age_hours", "a day", "must be a number"),
    ("dbops_target_db", ["a"], "dbops_target_db must be a string, got ['a']"),
    ("dbops_env_file", {"path": "x"}, "dbops_env_file must be a path"),
    ("dbops_expected_tables", ["users", {"a": 1}], "must be a list of str values, item 1"),
    ("dbops_backup_format", "tarball", "dbops_backup_format must be one of custom, plain_gzip, plain_zstd, "
                                       "got 'tarball'"),
    ("dbops_schedule_state", "gone", "must be one of present, absent"),
])
def test_wrong_types_and_choices_are_named(name, value, words):
    (line,) = problems(valid(**{name: value}))
    assert words in line, line


@pytest.mark.parametrize("name, value", [
    ("dbops_health_timeout", "90"), ("dbops_health_timeout", 90), ("dbops_backup_prune", "yes"),
    ("dbops_backup_max_age_hours", "1.5"), ("dbops_target_db", 2026), ("dbops_serial", "30%"),
    ("dbops_serial", [1, "50%"]), ("dbops_expected_tables", "users,orders"),
    ("dbops_backup_verify", "restore"),
])
def test_values_ansible_would_convert_are_accepted(name, value):
    assert problems(valid(**{name: value})) == []


def test_a_secret_is_never_shown():
    (line,) = problems(valid(dbops_db_password=["hunter2"]))
    assert "hunter2" not in line and "got a list" in line


def test_an_unresolvable_template_is_named_and_not_also_missing():
    values = valid()
    del values["dbops_env_file"]
    found = problems(values, ALL_APP, unresolved={"dbops_env_file": "'app_root' is undefined"})
    assert found == ["dbops_env_file cannot be resolved ('app_root' is undefined); fix its value or define "
                     "what it refers to"]


def test_required_names_must_be_documented():
    assert inputs.check_required_names(SPEC, ["dbops_env_file", "dbops_nope", "dbops_target_dbb"]) == [
        "dbops_nope", "dbops_target_dbb"]


def test_is_input_name():
    assert inputs.is_input_name("dbops_x") and inputs.is_input_name("DBOPS_X")
    assert not inputs.is_input_name("__dbops_x") and not inputs.is_input_name("vault_dbops_db_password")
    assert not inputs.is_input_name(3)


# The list itself.

def test_the_list_is_well_formed():
    for name, spec in SPEC.items():
        assert name.startswith("dbops_") and name not in inputs.RESERVED, name
        assert spec.get("type") in ("str", "path", "int", "float", "bool", "list", "dict", "raw"), name
        assert spec.get("description"), name
        assert "required" not in spec, "%s: required-ness belongs to each playbook's first task" % name
        if "default" in spec:
            assert inputs.type_problem(name, spec, spec["default"]) is None or spec["default"] == "", name


@pytest.mark.parametrize("name", APP_SPECIFIC)
def test_app_specific_values_have_no_default(name):
    assert "default" not in SPEC[name]


def test_no_default_names_this_app():
    for name, spec in SPEC.items():
        assert not re.search(r"moncabinet|qadhya-(postgres|nextjs)|/var/backups/qadhya|^qadhya$",
                             str(spec.get("default", ""))), name


def _used_names():
    """Every dbops_* name the collection's YAML, templates, inventories and docs mention."""
    files = [p for top in ("playbooks", "roles", "inventory", "molecule", "docs")
             for p in (REPO / top).rglob("*") if p.suffix in (".yml", ".yaml", ".j2", ".md")
             # roles.md's tables are generated from the list, and it shows a typo on purpose.
             and p.name not in ("vault.yml", "roles.md")]
    found = {}
    for path in files:
        # Not inputs: internals (__dbops_*) and the scratch databases db_backup names dbops_verify_*.
        for name in re.findall(r"(?<![\w])dbops_[a-z0-9_]+", path.read_text(encoding="utf-8")):
            if not name.startswith("dbops_verify_"):
                found.setdefault(name.rstrip("_"), path.relative_to(REPO))
    return found


# The misspelling the docs and the fault tests use on purpose, to show the refusal.
TYPO_EXAMPLES = {"dbops_target_dbb"}


def test_every_dbops_name_in_use_is_documented():
    unknown = {n: str(p) for n, p in _used_names().items()
               if n not in SPEC and n not in inputs.RESERVED and n not in TYPO_EXAMPLES}
    assert not unknown, "document these in roles/inputs/meta/argument_specs.yml: %s" % unknown


def test_every_documented_name_is_used():
    used = _used_names()
    unused = sorted(n for n in SPEC if n not in used)
    assert not unused, unused


def test_playbooks_require_only_documented_names():
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(path.read_text()) or []:
            for task in play.get("tasks") or []:
                if "qadhya.dbops.validate_inputs" in task:
                    required = (task["qadhya.dbops.validate_inputs"] or {}).get("required", [])
                    assert inputs.check_required_names(SPEC, required) == [], path.name


@pytest.mark.parametrize("name", sorted(SPEC))
def test_a_missing_value_line_says_what_the_variable_is_in_plain_words(name):
    line = inputs.missing_problem(name, SPEC[name], False, "x.yml")
    assert not re.search(r"\b[BCIMOPVU]\(", line), line
    assert line.count("(") == line.count(")") == 1, line
