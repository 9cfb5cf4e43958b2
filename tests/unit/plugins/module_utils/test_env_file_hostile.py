# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile but valid env files: what the parser reads and what a rewrite keeps.

Each case is a file an operator may really have (written on Windows, with a
BOM, shell-style, edited twice); the value read must be the one the app gets,
and setting DB_NAME must change that value only, keeping every other byte.
"""

from __future__ import annotations

import pytest

from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile

CASES = {
    "crlf": ("DB_HOST=postgres\r\nDB_NAME=qadhya\r\nDB_PASSWORD=pw\r\n",
             "DB_HOST=postgres\r\nDB_NAME=moncabinet\r\nDB_PASSWORD=pw\r\n"),
    "crlf_quoted_with_comment": ('export DB_NAME="qadhya" # the app\r\n',
                                 'export DB_NAME="moncabinet" # the app\r\n'),
    "bom": ("\ufeffDB_NAME=qadhya\nA=1\n", "\ufeffDB_NAME=moncabinet\nA=1\n"),
    "bom_crlf_export": ("\ufeffexport DB_NAME='qadhya'\r\n", "\ufeffexport DB_NAME='moncabinet'\r\n"),
    "export_empty": ("export DB_NAME=\nB=2\n", "export DB_NAME=moncabinet\nB=2\n"),
    "spaces_around_equals": ("DB_NAME = qadhya\n", "DB_NAME = moncabinet\n"),
    "duplicate_keys": ("DB_NAME=old\n# DB_NAME=comment\nDB_NAME=qadhya\n",
                       "DB_NAME=moncabinet\n# DB_NAME=comment\nDB_NAME=moncabinet\n"),
    "no_final_newline": ("A=1\nDB_NAME=qadhya", "A=1\nDB_NAME=moncabinet"),
    "tab_indented": ("\tDB_NAME=qadhya\n", "\tDB_NAME=moncabinet\n"),
    "old_mac_cr": ("A=1\rDB_NAME=qadhya\r", "A=1\rDB_NAME=moncabinet\r"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_file_reads_the_value_and_is_rewritten_keeping_its_form(name):
    text, wanted = CASES[name]
    assert envfile.parse(text).get("DB_NAME") in ("qadhya", "", "old"), envfile.parse(text)
    out = envfile.set_values(text, {"DB_NAME": "moncabinet"})
    assert out == wanted
    assert envfile.parse(out)["DB_NAME"] == "moncabinet"
    # a second rewrite changes nothing: the form survives the first
    assert envfile.set_values(out, {"DB_NAME": "moncabinet"}) == out


def test_values_are_read_without_line_ends_quotes_or_comments():
    assert envfile.parse("A=1\r\nB='two'\r\nC=\"three\" # c\r\n") == {"A": "1", "B": "two", "C": "three"}
    assert envfile.parse("export K=\n") == {"K": ""}
    assert envfile.parse("DB_NAME=old\nDB_NAME=new\n") == {"DB_NAME": "new"}  # the last wins, as in docker


def test_no_db_name_appends_it_once_with_the_files_line_ending():
    text = "DB_HOST=postgres\r\nDB_USER=app\r\n"
    assert "DB_NAME" not in envfile.parse(text)
    out = envfile.set_values(text, {"DB_NAME": "moncabinet"})
    assert out == text + "DB_NAME=moncabinet\r\n"


@pytest.mark.parametrize("value", [
    "d'affaires",             # a quote
    "a; DROP DATABASE x",     # a semicolon and spaces
    "base de données",        # spaces, non-ASCII
    "نهائي",                  # another script
    "x # not a comment",      # would be cut at the hash unquoted
    'say "hi"',               # double quotes inside
])
def test_names_with_quotes_semicolons_spaces_and_unicode_round_trip(value):
    for text in ("DB_NAME=qadhya\n", "export DB_NAME=\"qadhya\"\r\n", "\ufeffDB_NAME='qadhya'\n"):
        try:
            out = envfile.set_values(text, {"DB_NAME": value})
        except envfile.EnvFileError as exc:
            # refused, in one line naming the key (a single-quoted line cannot hold a single quote)
            assert "'" in value and "\n" not in str(exc) and "DB_NAME" in str(exc)
            continue
        assert envfile.parse(out)["DB_NAME"] == value, out
        assert out.endswith("\r\n") == text.endswith("\r\n") and out.startswith("\ufeff") == text.startswith(
            "\ufeff")


@pytest.mark.parametrize("value", ["two\nlines", "cr\rhere", "nul\x00byte"])
def test_values_an_env_file_cannot_hold_are_refused(value):
    with pytest.raises(envfile.EnvFileError, match="DB_NAME"):
        envfile.set_values("DB_NAME=qadhya\n", {"DB_NAME": value})
