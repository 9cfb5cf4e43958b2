# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Filters that read and rewrite KEY=value env files (docs in the sidecar .yml files)."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.qadhya.dbops.plugins.module_utils import _env_file as envfile


def _content(value, name):
    if value is None:
        return ""
    if isinstance(value, bytes):
        return to_text(value, errors="surrogate_or_strict")
    if not isinstance(value, str):
        raise AnsibleFilterError("%s expects the env file's text, got %s" % (name, type(value).__name__))
    return value


def env_set(content, values):
    """The text with each key of ``values`` set; everything else kept byte for byte."""
    try:
        return envfile.set_values(_content(content, "env_set"), values)
    except envfile.EnvFileError as exc:
        raise AnsibleFilterError("env_set: %s" % exc) from None


def env_get(content, key, default=None):
    return envfile.get(_content(content, "env_get"), key, default)


def env_parse(content):
    return envfile.parse(_content(content, "env_parse"))


def env_secret_keys(values):
    """The keys of `values` that look secret, by the same rule that masks them in diffs."""
    return [key for key in (values or {}) if envfile.is_secret_key(key)]


def env_diff(content, values, path="env file"):
    """A diff of only the lines env_set would change, secret-looking values masked."""
    try:
        return envfile.diff_text(_content(content, "env_diff"), values, path)
    except envfile.EnvFileError as exc:
        raise AnsibleFilterError("env_diff: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {
            "env_set": env_set,
            "env_get": env_get,
            "env_parse": env_parse,
            "env_diff": env_diff,
            "env_secret_keys": env_secret_keys,
        }
