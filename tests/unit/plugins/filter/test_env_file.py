# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for env file reading/rewriting (module_utils._env_file and its filters)."""

from __future__ import annotations


import pytest


from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.filter import env_file as filters
from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile

PASSWORD = "lab-moncabinet-pw-not-secret"

SAMPLE = (
    "# Qadhya app settings\n"
    "\n"
    "export DB_NAME=\"qadhya\"   # target database\n"
    "DB_USER = 'moncabinet'\n"
    "DB_PASSWORD=" + PASSWORD + "\n"
    "DB_HOST=postgres\n"
    "DB_PORT=5432 # inline\n"
    "DATABASE_URL=postgres://u:p@h:5432/db?sslmode=require&x=a=b\n"
    "APP_TITLE=\"Qadhya – Assistant juridique\"\n"
    "# DB_NAME=commented_out\n"
)


def test_parse_reads_quotes_export_spaces_comments_and_equals():
    values = envfile.parse(SAMPLE)
    assert values["DB_NAME"] == "qadhya"
    assert values["DB_USER"] == "moncabinet"
    assert values["DB_PASSWORD"] == PASSWORD
    assert values["DB_PORT"] == "5432"
    assert values["DATABASE_URL"] == "postgres://u:p@h:5432/db?sslmode=require&x=a=b"
    assert values["APP_TITLE"] == "Qadhya – Assistant juridique"
    assert "commented_out" not in values.values()


def test_parse_last_occurrence_wins_and_bom_is_ignored():
    assert envfile.parse("\ufeffA=1\nA=2\n") == {"A": "2"}
    assert filters.env_get("A=1\n", "B", "dflt") == "dflt"
    assert filters.env_get(b"A=1\n", "A") == "1"


def test_set_keeps_double_quotes_export_and_trailing_comment():
    out = envfile.set_values(SAMPLE, {"DB_NAME": "moncabinet"})
    assert 'export DB_NAME="moncabinet"   # target database\n' in out
    # nothing else moved by a single byte
    assert out == SAMPLE.replace('DB_NAME="qadhya"', 'DB_NAME="moncabinet"')


def test_set_keeps_single_quotes_and_spaces_around_equals():
    out = envfile.set_values(SAMPLE, {"DB_USER": "qadhya_app"})
    assert "DB_USER = 'qadhya_app'\n" in out


def test_set_unquoted_keeps_inline_comment_and_equals_in_value():
    out = envfile.set_values(SAMPLE, {"DB_PORT": "6432", "DATABASE_URL": "postgres://x/y?a=b=c"})
    assert "DB_PORT=6432 # inline\n" in out
    assert "DATABASE_URL=postgres://x/y?a=b=c\n" in out
    assert envfile.parse(out)["DATABASE_URL"] == "postgres://x/y?a=b=c"


def test_set_same_value_returns_identical_text():
    assert envfile.set_values(SAMPLE, {"DB_NAME": "qadhya", "DB_PORT": 5432}) == SAMPLE


def test_set_appends_missing_key_with_newline_fixup():
    out = envfile.set_values("A=1", {"B": "2"})
    assert out == "A=1\nB=2\n"
    assert envfile.set_values("", {"B": "2"}) == "B=2\n"


def test_set_preserves_crlf_line_endings():
    text = "A=1\r\nDB_NAME=qadhya\r\n"
    out = envfile.set_values(text, {"DB_NAME": "moncabinet", "NEW": "x"})
    assert out == "A=1\r\nDB_NAME=moncabinet\r\nNEW=x\r\n"


def test_set_preserves_bom():
    out = envfile.set_values("\ufeffDB_NAME=qadhya\n", {"DB_NAME": "moncabinet"})
    assert out == "\ufeffDB_NAME=moncabinet\n"


def test_set_every_occurrence_but_not_comments():
    out = envfile.set_values("DB_NAME=a\n# DB_NAME=b\nDB_NAME=c\n", {"DB_NAME": "z"})
    assert out == "DB_NAME=z\n# DB_NAME=b\nDB_NAME=z\n"


def test_set_quotes_unquoted_value_that_would_be_misread():
    out = envfile.set_values("A=1\n", {"A": "x #y"})
    assert out == 'A="x #y"\n'
    assert envfile.parse(out)["A"] == "x #y"


def test_set_escapes_double_quotes_inside_double_quoted_value():
    out = envfile.set_values('A="1"\n', {"A": 'say "hi"'})
    assert out == 'A="say \\"hi\\""\n'
    assert envfile.parse(out)["A"] == 'say "hi"'


@pytest.mark.parametrize("values, fragment", [
    ({"A": "x\ny"}, "line break"),
    ({"1A": "x"}, "invalid env key"),
    ({"A B": "x"}, "invalid env key"),
    ({"A": None}, "no value"),
])
def test_set_refuses_bad_keys_and_values(values, fragment):
    with pytest.raises(envfile.EnvFileError, match=fragment):
        envfile.set_values("A=1\n", values)


def test_set_refuses_single_quote_inside_single_quoted_line():
    with pytest.raises(envfile.EnvFileError, match="single quote"):
        envfile.set_values("A='x'\n", {"A": "it's"})


def test_filter_wraps_errors():
    with pytest.raises(AnsibleFilterError, match="env_set: invalid env key"):
        filters.env_set("A=1\n", {"-": "x"})
    with pytest.raises(AnsibleFilterError):
        filters.env_set(42, {"A": "x"})


def test_diff_shows_only_changed_lines_and_never_the_password():
    text = filters.env_diff(SAMPLE, {"DB_NAME": "moncabinet", "DB_PASSWORD": "new-pw", "DB_HOST": "postgres"},
                            "/opt/moncabinet/.env")
    assert '-export DB_NAME="qadhya"   # target database' in text
    assert '+export DB_NAME="moncabinet"   # target database' in text
    assert "DB_PASSWORD=********" in text
    assert PASSWORD not in text and "new-pw" not in text
    assert "DB_HOST" not in text  # unchanged
    assert "DB_USER" not in text
    assert text.startswith("--- /opt/moncabinet/.env (before)\n")


def test_diff_empty_when_nothing_changes_and_marks_appended():
    assert filters.env_diff(SAMPLE, {"DB_NAME": "qadhya"}) == ""
    text = filters.env_diff("A=1\n", {"B": "2"})
    assert "+B=2   (appended)" in text


def test_changes_masks_secret_values():
    items = envfile.changes("API_TOKEN=abc\n", {"API_TOKEN": "def"})
    assert items == [dict(key="API_TOKEN", before="********", after="********",
                          before_line="API_TOKEN=********", after_line="API_TOKEN=********", appended=False)]


def test_filters_are_registered():
    assert set(filters.FilterModule().filters()) == {"env_set", "env_get", "env_parse", "env_diff",
                                                     "env_secret_keys"}


def test_secret_keys_follow_the_masking_rule():
    env_secret_keys = filters.env_secret_keys
    assert env_secret_keys({"DB_NAME": "x", "DB_PASSWORD": "y", "api_key": "z"}) == ["DB_PASSWORD", "api_key"]
    assert env_secret_keys({}) == [] and env_secret_keys(None) == []
