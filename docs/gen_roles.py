"""Regenerate the variable tables of docs/roles.md from the argument specs.

Each role's table comes from roles/<role>/meta/argument_specs.yml, with the
Default column read from its defaults/main.yml (so "`dbops_db_user`, else
`postgres`" shows where the value really comes from); the collection-wide
table comes from roles/inputs/meta/argument_specs.yml, the one list of the
dbops_* variables, with the playbooks that require each one (read from their
qadhya.dbops.validate_inputs task). Only the text between the markers is
rewritten; the prose and examples around it are written by hand.

    .venv/bin/python docs/gen_roles.py          # rewrite docs/roles.md
    .venv/bin/python docs/gen_roles.py --check  # exit 1 when it is out of date (CI)
"""

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "roles.md"
VALIDATE = "qadhya.dbops.validate_inputs"
BEGIN = "<!-- BEGIN generated from roles/%s/meta/argument_specs.yml by docs/gen_roles.py -->"
END = "<!-- END generated -->"
MARKUP = re.compile(r"\b([CIMOVPR])\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
# A role default that forwards a dbops_* variable: with a fallback value,
# with a required-variable hint, or bare.
FORWARD = re.compile(r"^\{\{\s*(dbops_\w+)\s*(?:\|\s*default\((.*)\))?\s*\}\}$", re.S)


def markup(text):
    """Ansible doc markup (C(), O(), V(), M()...) as Markdown."""
    def one(match):
        kind, body = match.groups()
        return "*%s*" % body if kind == "I" else "`%s`" % body
    return MARKUP.sub(one, text)


def prose(description):
    parts = description if isinstance(description, list) else [description or ""]
    return " ".join(" ".join(markup(str(p)).split()) for p in parts)


def literal(value):
    if isinstance(value, bool):
        return "`%s`" % str(value).lower()
    if value == "" or value is None:
        return '`""`'
    if isinstance(value, (list, dict)):
        return "`%s`" % (yaml.safe_dump(value, default_flow_style=True).strip(),)
    return "`%s`" % value


def default_cell(spec, role_default=None, has_role_default=False):
    if has_role_default and isinstance(role_default, str):
        match = FORWARD.match(" ".join(role_default.split()))
        if match:
            name, fallback = match.groups()
            if fallback is None or fallback.startswith("undef("):
                return "`%s`" % name
            return "`%s`, else %s" % (name, literal(yaml.safe_load(fallback)))
    if has_role_default:
        return literal(role_default)
    return literal(spec["default"]) if "default" in spec else "—"


def type_cell(spec, required=False):
    kind = spec.get("type", "str")
    if kind == "list" and spec.get("elements"):
        kind = "list of %s" % spec["elements"]
    return kind + (", required" if required else "")


def meaning(spec):
    text = prose(spec.get("description"))
    if spec.get("choices"):
        text += " One of %s." % ", ".join("`%s`" % c for c in spec["choices"])
    return text.replace("|", "\\|")


def role_table(role):
    options = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    rows = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
    for name, spec in options.items():
        rows.append("| `%s` | %s | %s | %s |" % (
            name, type_cell(spec, spec.get("required", False)),
            default_cell(spec, defaults.get(name), name in defaults), meaning(spec)))
    return rows


def required_by():
    """{variable: [playbook, ...]} from each playbook's validate_inputs task."""
    needs = {}
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(path.read_text()) or []:
            for task in play.get("tasks") or []:
                for name in (task.get(VALIDATE) or {}).get("required", []) if VALIDATE in task else []:
                    needs.setdefault(name, []).append(path.name)
    return needs


def inputs_table():
    options = yaml.safe_load((REPO / "roles" / "inputs" / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    needs = required_by()
    rows = ["| Variable | Type | Default | Required by | Meaning |", "|---|---|---|---|---|"]
    for name, spec in options.items():
        rows.append("| `%s` | %s | %s | %s | %s |" % (
            name, type_cell(spec), default_cell(spec), ", ".join(needs.get(name, [])) or "—", meaning(spec)))
    return rows


def render(text):
    """``text`` with every generated block rewritten."""
    def block(match):
        role = match.group(1)
        rows = inputs_table() if role == "inputs" else role_table(role)
        return "\n".join([BEGIN % role, *rows, END])
    pattern = re.escape(BEGIN).replace(re.escape("%s"), r"(\w+)") + r".*?" + re.escape(END)
    out, count = re.subn(pattern, block, text, flags=re.S)
    if not count:
        raise SystemExit("no generated block in %s" % DOC)
    return out


def main(argv):
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("docs/roles.md is out of date: run .venv/bin/python docs/gen_roles.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
