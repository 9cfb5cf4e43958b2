"""Every command the docs give for the lab, run as written, in document order.

Scope: README.md and every docs/**/*.md, except docs/operations.md (run by
test_operations.py) and docs/benchmarks.md (`make bench` measures, it is
never pass/fail). docs/roles.md is generated, and read like the others.

What counts as a command:

- every line of a fenced block whose language is `bash`, `sh`, `shell` or
  `console` (a line ending in `\\` continues on the next; `# ...` lines are
  comments); in any other fenced block, the lines starting with `$ ` (a
  transcript: the lines after each are its output);
- the inline spans `ansible-doc ...` naming one plugin (the README's and
  modules.md's way of reading a module's documentation), run once each.

A block that cannot run on the lab (a real server, a registry, the
execution-environment image) says so on the line before it:
`<!-- not run: <why> -->`. Any other block runs, and must then only use the
lab: every `-i` names `inventory/lab` or `inventory/lab-multi`, with no vault
prompt. A command exits 0 unless its trailing comment says `exit status N`.
`make demo` and `make test` are not run here: they are the CI run itself;
the test checks they are the README's two set-up commands.

How "as written" meets a shared machine: `inventory/lab` targets the
`default` instance's fixed container names and port 3000, which belong to
whoever runs `make demo`. The commands run from the checkout against copies
of `inventory/lab` and `inventory/lab-multi` whose only differences are this
test's instance names (`default` -> `<prefix>docs`, `b` -> `<prefix>docs-b`),
their containers, ports and the report directory (a temporary one); in a
command only `-i inventory/lab*` is rewritten to the copy, and an
instance's state directory (`/var/tmp/qadhya-lab/default/...`) to this
test's instance's. `lab/lab.py` commands get the same instance names (an
explicit `--instance` for the default one) and the same ports; `make lab-*`
reads them from `INSTANCE` in its environment, the Makefile's own variable.

The docs run in the order of PLAN, each from the lab state it assumes (the
incident, after `lab.py reset`, which takes seconds; or what the doc before
it left: restore.md and rollback.md follow consolidate.md's run). Where a doc
shows output, KEY_LINES names a line of it that must be both in the doc and
in what the command printed.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import labkit
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NOT_IN_SCOPE = {
    "docs/operations.md": "run block by block by tests/integration/test_operations.py",
    "docs/benchmarks.md": "bench commands: `make bench` measures and is never pass/fail",
}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE_RE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                      re.S | re.M)
NOT_RUN_RE = re.compile(r"<!--\s*not run:\s*(?P<why>.*?)\s*-->\s*\Z", re.S)
# "exit status N", or "exit status N where PROGRAM is missing" (0 where it is there).
EXIT_RE = re.compile(r"#.*\bexit status (\d+)(?: where (\S+) is missing)?")
ANSIBLE_DOC_RE = re.compile(r"`(ansible-doc (?:-t (?:role|filter|module) )?qadhya\.dbops\.\w+)`")
LAB_INVENTORY_RE = re.compile(r"(-i\s+)inventory/(lab(?:-multi)?)(?=\s|$)")
LAB_PY_RE = re.compile(r"(python3? lab/lab\.py) +(\w[\w-]*)([^&;|#\n]*)")
LAB_STATE_RE = re.compile(r"/var/tmp/qadhya-lab/([\w-]+)(?=/|\s|$)")
SETUP_COMMANDS = ["make demo", "make test"]  # the README's two; the CI run itself
# Absolute paths a command may name: the lab's state and the scratch files the docs create.
LAB_PATHS = ("/var/tmp/qadhya-lab/", "/tmp/qadhya-")
# Docs whose commands do not run on the lab yet, and why; each must fail the
# check below (strict), so that the entry goes once the doc is fixed.
PENDING = {}

# Docs with lab commands, in the order they run, each with the state it starts from:
# "incident" resets the instance first, "app_on_data" also points the app at
# moncabinet (the incident's step 3), None takes what the doc before left.
PLAN = [
    ("README.md", None),
    ("docs/modules.md", None),
    ("docs/roles.md", None),
    ("docs/execution-environment.md", None),
    ("docs/playbooks/check.md", "incident"),
    ("docs/playbooks/consolidate.md", None),     # check.yml changed nothing
    ("docs/playbooks/restore.md", None),         # the consolidation's backup
    ("docs/playbooks/dr_drill.md", None),
    ("docs/playbooks/rollback.md", None),        # undoes consolidate.md's run
    ("docs/playbooks/migrate.md", "app_on_data"),
    ("docs/playbooks/backup.md", None),          # after migrate.yml, as the doc says
    ("docs/playbooks/schedule.md", None),
    ("docs/lab.md", None),                        # brings its own instances up and down
]

# (doc, command as written without its comment, occurrence) -> lines the doc
# shows after it that the run must print too (whitespace runs compared as one space).
KEY_LINES = {
    ("docs/playbooks/check.md", "ansible-playbook playbooks/check.yml -i inventory/lab", 1): [
        "lab-default critical database=ok configuration=CRITICAL migrations=WARNING backup=CRITICAL",
        "configuration: data in ''moncabinet'' (580 rows in knowledge_base, 6 in web_sources, 2 in users);"
        " app configured for ''qadhya'' which is empty — they disagree",
        "migrations: 1 pending: 20260213_kb_validation_gamification.sql (run migrate.yml)",
        # The app is critical, or a warning while Docker's first health check is still to come.
        "msg: 'critical: configuration, backup,",
    ],
    ("docs/playbooks/consolidate.md", "ansible-playbook playbooks/consolidate.yml -i inventory/lab", 1): [
        "'lab-default: SUCCESS moncabinet -> qadhya'",
        "switch rows 591 in 6 tables, equal before and after'",
        "'  whole run: rows 588 -> 591: _migrations 0 -> 1, user_validation_stats - -> 2'",
        "'  migrations applied: 20260213_kb_validation_gamification.sql'",
    ],
    ("docs/playbooks/consolidate.md", "ansible-playbook playbooks/consolidate.yml -i inventory/lab", 2): [
        "'lab-default: UNCHANGED qadhya -> qadhya'",
        "lab-default : ok=",
    ],
    ("docs/playbooks/restore.md", "ansible-playbook playbooks/restore.yml -i inventory/lab", 1): [
        "lab-default success 588 / 588",
        "row counts equal the manifest, and so do the content checksums (5 tables)'",
        "live database and app untouched;",
    ],
    ("docs/playbooks/dr_drill.md",
     "ansible-playbook playbooks/dr_drill.yml -i inventory/lab -e dbops_drill_allow_local=true", 1): [
        "drill ok: restored",
        "(5 tables, 588 rows, every content checksum equal to the manifest)",
        "scratch container removed: True",
    ],
    ("docs/playbooks/rollback.md", "ansible-playbook playbooks/rollback.yml -i inventory/lab", 1): [
        "'lab-default: ROLLED_BACK moncabinet -> qadhya'",
        "'  rolled back: renamed qadhya back to moncabinet, restored the dropped qadhya, env file restored,"
        " app running healthy on moncabinet'",
    ],
    ("docs/playbooks/rollback.md", "ansible-playbook playbooks/rollback.yml -i inventory/lab", 2): [
        "'lab-default: UNCHANGED moncabinet -> qadhya'",
        "'  nothing to roll back: run",
    ],
    ("docs/playbooks/schedule.md", "cat /tmp/qadhya-dbops-cron", 1): [
        "#Ansible: qadhya.dbops daily database check",
        "0 6 * * * root cd <checkout> && <checkout>/.venv/bin/ansible-playbook"
        " <checkout>/playbooks/check.yml -i",
    ],
    ("docs/playbooks/migrate.md", "ansible-playbook playbooks/migrate.yml -i inventory/lab --check", 1): [
        "lab-default planned moncabinet", "'    would apply: 20260213_kb_validation_gamification.sql'"],
    ("docs/playbooks/migrate.md", "ansible-playbook playbooks/migrate.yml -i inventory/lab", 1): [
        "lab-default success moncabinet", "'    applied: 20260213_kb_validation_gamification.sql'"],
    ("docs/playbooks/migrate.md", "ansible-playbook playbooks/migrate.yml -i inventory/lab", 2): [
        "lab-default unchanged moncabinet", "'    none pending (1 applied before)'"],
    ("docs/playbooks/backup.md", "ansible-playbook playbooks/backup.yml -i inventory/lab", 1): [
        "lab-default success moncabinet 591", "'    retention: deleted 0, kept 2'"],
    ("docs/execution-environment.md", "make build", 1): [".cache/dist/qadhya-dbops-0.1.0.tar.gz"],
    ("docs/lab.md", "python3 lab/lab.py env --instance pg17", 1): [
        '"pg_version": "17"', '"pg_image": "qadhya-lab/postgres:17"'],
}


@dataclass
class Command:
    text: str          # as written, comment included
    line: int
    exit_status: int = 0
    missing: str = ""  # the program whose absence gives that exit status, when it is absent

    @property
    def bare(self):
        """The command without its trailing comment, whitespace runs as one space."""
        words = shlex.split(self.text, comments=True)
        return " ".join(words)


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    body: str
    not_run: str | None
    commands: list = field(default_factory=list)
    shown: str = ""    # the output the doc shows for it (the next output block, a transcript's lines)


def _join_continuations(lines):
    out, pending, start = [], "", None
    for number, line in lines:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending, start = "", None
    return out


def parse(doc, text=None):
    """The doc's command blocks, in order."""
    text = (REPO / doc).read_text(encoding="utf-8") if text is None else text
    fences = list(FENCE_RE.finditer(text))
    blocks = []
    for index, fence in enumerate(fences):
        lang = fence["lang"].lower()
        body_lines = [line[len(fence["indent"]):] if line.startswith(fence["indent"]) else line.lstrip()
                      for line in fence["body"].splitlines()]
        first = text.count("\n", 0, fence.start()) + 2
        numbered = list(enumerate(body_lines, first))
        transcript = any(line.startswith("$ ") for line in body_lines)
        if lang not in SHELL_LANGS and not transcript:
            continue
        before = text[fences[index - 1].end() if index else 0:fence.start()]
        marker = NOT_RUN_RE.search(before)
        block = Block(doc, first - 1, lang, "\n".join(body_lines), marker["why"] if marker else None)
        if transcript:
            shown = []
            for number, line in numbered:
                if line.startswith("$ "):
                    block.commands.append(Command(line[2:], number))
                else:
                    shown.append(line)
            block.shown = "\n".join(shown)
        else:
            code = [(n, line) for n, line in numbered if line.strip() and not line.lstrip().startswith("#")]
            block.commands = [Command(line.strip(), n) for n, line in _join_continuations(code)]
            following = fences[index + 1] if index + 1 < len(fences) else None
            if following and following["lang"].lower() not in SHELL_LANGS | {"yaml", "json", "markdown"}:
                block.shown = following["body"]
        for command in block.commands:
            status = EXIT_RE.search(command.text)
            if status and not (status[2] and shutil.which(status[2])):
                command.exit_status, command.missing = int(status[1]), status[2] or ""
        blocks.append(block)
    return blocks


def in_scope():
    docs = ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))
    return [doc for doc in docs if doc not in NOT_IN_SCOPE]


def ansible_doc_spans(doc):
    return ANSIBLE_DOC_RE.findall((REPO / doc).read_text(encoding="utf-8"))


def lab_problems(command):
    """Why a command to run does not run on the lab as shipped ([] when it does)."""
    problems = []
    words = shlex.split(command.text, comments=True)
    for flag, value in zip(words, words[1:], strict=False):
        if flag in ("-i", "--inventory") and value not in ("inventory/lab", "inventory/lab-multi"):
            problems.append("inventory %s is not the lab's" % value)
    if any(word in ("--ask-vault-pass", "--vault-password-file") for word in words):
        problems.append("it asks for a vault password")
    if words[:1] == ["ansible-playbook"] and "-i" not in words:
        problems.append("no -i inventory/lab: it would take ansible.cfg's default")
    # The test maps instance names, never the default instance's containers, and
    # leaves other people's instances alone.
    if any(re.search(r"\bqadhya-(postgres|nextjs)\b", word) for word in words):
        problems.append("it names the default instance's containers")
    if "lab/lab.py" in words and "--all" in words:
        problems.append("it acts on every lab instance of the machine")
    if "<<" in command.text:
        problems.append("a here-document: a block runs line by line")
    for word in words:
        path = word.partition("=")[2] if "=/" in word else word
        if path.startswith("/") and not path.startswith(LAB_PATHS):
            problems.append("%s is not a path the lab or the doc creates" % path)
    return problems


def doc_problems(doc):
    """Why the doc's commands do not all run on the lab as shipped ([] when they do)."""
    problems = []
    for block in parse(doc):
        where = "%s:%d" % (doc, block.line)
        if block.not_run is not None:
            if not block.not_run:
                problems.append("%s: `<!-- not run: -->` without a reason" % where)
            continue
        for command in block.commands:
            if command.bare in SETUP_COMMANDS:
                continue
            for problem in lab_problems(command):
                problems.append("%s: `%s`: %s; run it on the lab or mark the block"
                                " `<!-- not run: <why> -->`" % (where, command.text, problem))
        if block.commands and doc not in dict(PLAN):
            problems.append("%s runs commands but is not in this test's PLAN" % doc)
    return problems


def norm(text):
    return " ".join(text.split())


def occurrences(blocks):
    """(block, command, occurrence number of that command in its doc) for the commands that run."""
    seen = {}
    for block in blocks:
        if block.not_run is not None:
            continue
        for command in block.commands:
            seen[command.bare] = seen.get(command.bare, 0) + 1
            yield block, command, seen[command.bare]


# ----------------------------------------------------------------- unit-level checks (no lab)


@pytest.mark.parametrize("doc", [
    pytest.param(doc, marks=pytest.mark.xfail(reason=PENDING[doc], strict=True)) if doc in PENDING else doc
    for doc in in_scope()])
def test_every_command_is_run_on_the_lab_or_marked_with_why_not(doc):
    problems = doc_problems(doc)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command, problem", [
    ("ansible-playbook playbooks/backup.yml -i inventory/prod", "inventory inventory/prod is not the lab's"),
    ("ansible-playbook playbooks/migrate.yml -i /tmp/pbdev/inv.json", "is not the lab's"),
    ("ansible-playbook playbooks/check.yml -i inventory/lab --ask-vault-pass", "vault password"),
    ("ansible-playbook playbooks/check.yml", "no -i inventory/lab"),
    ("ls -l /tmp/pbdev/backups", "/tmp/pbdev/backups is not a path"),
    ("ansible-playbook playbooks/backup.yml -i inventory/lab -e dbops_backup_copy_to=/mnt/x", "/mnt/x"),
    ("docker stop qadhya-nextjs", "default instance's containers"),
    ("python3 lab/lab.py down --all", "every lab instance"),
    ("python3 - <<'EOF'", "here-document"),
])
def test_the_check_refuses_what_cannot_run_on_the_lab(command, problem):
    problems = lab_problems(Command(command, 1))
    assert any(problem in p for p in problems), problems


SAMPLE = """\
<!-- not run: needs a real server -->
```bash
ansible-playbook playbooks/check.yml -i inventory/prod
```

   ```bash
   ansible-playbook playbooks/check.yml -i inventory/lab \\
     -e a=b  # critical: exit status 2
   cat /tmp/qadhya-x  # exit status 1 where no-such-program-here is missing
   ```

   ```
   TASK [Report | Summary]
   ```

```
$ make lab-status
  health -> 503
```
"""


def test_blocks_markers_exit_statuses_and_shown_output_are_read_as_documented():
    marked, run, transcript = parse("sample.md", SAMPLE)
    assert marked.not_run == "needs a real server"
    assert run.not_run is None and [(c.bare, c.exit_status, c.missing) for c in run.commands] == [
        ("ansible-playbook playbooks/check.yml -i inventory/lab -e a=b", 2, ""),
        ("cat /tmp/qadhya-x", 1, "no-such-program-here")]
    assert run.shown.strip() == "TASK [Report | Summary]"
    assert [c.bare for c in transcript.commands] == ["make lab-status"] and "-> 503" in transcript.shown


def test_the_lab_commands_pass_the_check():
    for command in ("ansible-playbook playbooks/consolidate.yml -i inventory/lab-multi",
                    "ls -l /var/tmp/qadhya-lab/default/backups", "make lab-status",
                    "ansible-playbook playbooks/schedule.yml -i inventory/lab -e x=/tmp/qadhya-dbops-cron"):
        assert lab_problems(Command(command, 1)) == [], command


def test_the_readme_sets_up_with_its_two_commands():
    setup = parse("README.md")[0]
    assert setup.not_run is None and [c.bare for c in setup.commands] == SETUP_COMMANDS


def test_key_lines_are_the_docs_own():
    # A key line the doc no longer shows would test nothing the reader sees.
    missing = []
    planned = set()
    for doc, _state in PLAN:
        for block, command, nth in occurrences(parse(doc)):
            key = (doc, command.bare, nth)
            planned.add(key)
            if doc in PENDING:
                continue
            shown = norm(block.shown + " " + command.text.partition("#")[2])
            missing += [(key, line) for line in KEY_LINES.get(key, []) if norm(line) not in shown]
    assert not missing, missing
    assert {key for key in KEY_LINES if key[0] not in PENDING} <= planned, set(KEY_LINES) - planned


# ----------------------------------------------------------------- the run


class Lab:
    """The test's instances: names, ports and the rewriting of a command to them."""

    def __init__(self, work):
        self.work = work
        self.ports = {}

    @staticmethod
    def instance(name):
        return labkit.instance_name("docs" if name == "default" else "docs-" + name)

    def port(self, name):
        return self.ports.setdefault(self.instance(name), labkit.free_port())

    def inventory(self, name):
        """A copy of inventory/<name> for this test's instances."""
        source, copy = REPO / "inventory" / name, self.work / "inventory" / name
        if not copy.exists():
            shutil.copytree(source, copy)
            hosts = yaml.safe_load((copy / "hosts.yml").read_text())
            for host in hosts["lab"]["hosts"].values():
                mine = self.instance(host["qadhya_lab_instance"])
                prefix = "qadhya-" + mine
                host.update(qadhya_lab_instance=mine, dbops_db_container=prefix + "-postgres",
                            dbops_app_container=prefix + "-nextjs",
                            dbops_health_url="http://127.0.0.1:%d/api/health" % self.port(
                                host["qadhya_lab_instance"]))
            (copy / "hosts.yml").write_text(yaml.safe_dump(hosts))
            group_vars = copy / "group_vars" / "lab.yml"
            settings = yaml.safe_load(group_vars.read_text())
            settings["dbops_report_dir"] = str(self.work / "reports")
            group_vars.write_text(yaml.safe_dump(settings))
        return copy

    def rewrite(self, command):
        text = LAB_INVENTORY_RE.sub(lambda m: m[1] + str(self.inventory(m[2])), command)

        def lab_py(match):
            words = shlex.split(match[3])
            name = "default"
            if "--instance" in words:
                name = words[words.index("--instance") + 1]
                words[words.index("--instance") + 1] = self.instance(name)
            else:
                words[:0] = ["--instance", self.instance(name)]
            if "--port" in words:
                words[words.index("--port") + 1] = str(self.port(name))
            elif match[2] == "up":
                words += ["--port", str(self.port(name))]
            return "%s %s %s " % (match[1], match[2], shlex.join(words))

        # An instance's state directory, under the lab's root (lab.py's default, or QADHYA_LAB_ROOT).
        root = os.environ.get("QADHYA_LAB_ROOT", "/var/tmp/qadhya-lab")
        text = LAB_STATE_RE.sub(lambda m: "%s/%s" % (root, self.instance(m[1])), text)
        return LAB_PY_RE.sub(lab_py, text)

    def env(self):
        return {**os.environ, "PATH": "%s:%s" % (Path(sys.executable).parent, os.environ["PATH"]),
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0", "INSTANCE": self.instance("default")}

    def down_all(self):
        for name in self.ports:
            labkit.run_lab("down", "--instance", name, check=False)

    def set_state(self, state):
        name = self.instance("default")
        labkit.run_lab("up", "--instance", name, "--port", self.port("default"))
        if state == "app_on_data":
            lab = labkit.LabInstance(json.loads(labkit.run_lab("env", "--instance", name).stdout))
            lab.set_env("DB_NAME", "moncabinet")
            labkit.docker("restart", lab.app)
            labkit.wait_for(lambda: lab.health()[0] == 200, timeout=60)


@dataclass
class Ran:
    doc: str
    command: Command
    nth: int
    argv: str
    returncode: int
    output: str
    seconds: float


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs")
    lab = Lab(work)
    env = lab.env()
    results = []
    spans = list(dict.fromkeys(span for doc, _state in PLAN for span in ansible_doc_spans(doc)))

    def ansible_doc(span):
        proc = subprocess.run(shlex.split(span), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        return span, proc

    # ansible-doc only reads files: its pages are read beside the lab commands, two at a time.
    pool = ThreadPoolExecutor(2)
    pages = pool.map(ansible_doc, spans)
    try:
        for doc, state in PLAN:
            # A doc that fails the check above is not run: the check says why.
            todo = [(b, c, n) for b, c, n in occurrences(parse(doc)) if c.bare not in SETUP_COMMANDS]
            if not todo or doc_problems(doc):
                continue
            if state:
                lab.set_state(state)
            for _block, command, nth in todo:
                argv = lab.rewrite(command.text)
                started = time.monotonic()
                proc = subprocess.run(["bash", "-o", "pipefail", "-c", argv], cwd=REPO, env=env,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
                                      check=False)
                results.append(Ran(doc, command, nth, argv, proc.returncode, proc.stdout + proc.stderr,
                                   time.monotonic() - started))
                # Each command's whole output, for the reader of a failure.
                (work / ("%02d-%s.txt" % (len(results), Path(doc).stem))).write_text(
                    "$ %s\n(exit %d in %.1f s)\n%s" % (argv, proc.returncode, results[-1].seconds,
                                                      results[-1].output))
        yield lab, results, list(pages)
    finally:
        pool.shutdown(cancel_futures=True)
        lab.down_all()
        Path("/tmp/qadhya-dbops-cron").unlink(missing_ok=True)
        shutil.rmtree("/tmp/qadhya-schedule", ignore_errors=True)


def _tail(result):
    return "%s:%d `%s`\n(run as `%s`, %.1f s, exit %d)\n%s" % (
        result.doc, result.command.line, result.command.text, result.argv, result.seconds, result.returncode,
        result.output[-3000:])


@pytest.mark.integration
def test_every_command_exits_as_its_doc_says(ran):
    _lab, results, _docs = ran
    wrong = [_tail(r) for r in results if r.returncode != r.command.exit_status]
    assert not wrong, "\n\n".join(wrong)
    ran_docs = {r.doc for r in results}
    assert {"docs/playbooks/check.md", "docs/playbooks/consolidate.md", "docs/lab.md"} <= ran_docs


@pytest.mark.integration
def test_what_the_docs_show_is_what_the_commands_print(ran):
    _lab, results, _docs = ran
    printed = {(r.doc, r.command.bare, r.nth): r for r in results}
    missing = []
    for key, lines in KEY_LINES.items():
        if key[0] in PENDING:
            continue  # not run: test_every_command_is_run_on_the_lab_or_marked_with_why_not
        result = printed.get(key)
        if result is None:
            missing.append("%s was not run" % (key,))
            continue
        if result.command.missing:
            continue  # its documented failure instead: test_every_command_exits_as_its_doc_says
        output = norm(result.output.replace(str(REPO), "<checkout>"))
        missing += ["%s\nmisses: %s" % (_tail(result), line) for line in lines if norm(line) not in output]
    assert not missing, "\n\n".join(missing)


@pytest.mark.integration
def test_every_documented_plugin_has_its_page(ran):
    _lab, _results, docs = ran
    # The README's table names every module and action plugin with its command.
    plugins = {"ansible-doc qadhya.dbops." + p.stem for p in (REPO / "plugins" / "modules").glob("*.py")}
    assert plugins <= set(ansible_doc_spans("README.md")), plugins - set(ansible_doc_spans("README.md"))
    for span, proc in docs:
        name = span.split()[-1]
        output = proc.stdout + proc.stderr
        # ansible-doc exits 0 for an unknown name: only a warning says so.
        assert proc.returncode == 0 and "was not found" not in output and name in proc.stdout, (span, output)


@pytest.mark.integration
def test_the_lab_schedule_installs_nothing(ran):
    _lab, results, _docs = ran
    runs = [r for r in results if "playbooks/schedule.yml" in r.command.text]
    assert runs, "schedule.md runs schedule.yml on the lab"
    for result in runs:
        task = result.output[result.output.index("TASK [Schedule | Install cron]"):]
        assert task.split("\n\n")[0].splitlines()[1].startswith("skipping:"), _tail(result)
        if result.command.missing:
            assert 'Failed to find required executable "crontab"' in result.output, _tail(result)


@pytest.mark.integration
def test_the_drill_leaves_no_scratch_container(ran):
    lab, results, _docs = ran
    assert any("playbooks/dr_drill.yml" in r.command.text for r in results)
    names = labkit.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in names if n.endswith("-drill") and any(i in n for i in lab.ports)] == []
