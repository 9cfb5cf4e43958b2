#!/usr/bin/env bash
# ansible-test must run from ansible_collections/<ns>/<name>: copy the
# tracked tree there (a symlink would resolve back to the checkout) and run
# every sanity test in a virtualenv built from PyPI (no test containers).
# QADHYA_SANITY_VENV names another virtualenv whose ansible-test to run (the
# ansible-core floor's, tests/integration/test_ansible_floor.py); its tree
# is copied apart, so both can run at once.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
venv=${QADHYA_SANITY_VENV:-$top/.venv}
py=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
req=$venv/lib/python$py/site-packages/ansible_test/_internal/python_requirements.py
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',/\1/p" "$req" | head -n 1)
cache=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
if ! cmp -s tests/sanity/get_pip_offline.py "$cache"; then
  mkdir -p "$(dirname "$cache")"
  cp tests/sanity/get_pip_offline.py "$cache"
fi

# Sanity covers the collection's content. The lab, the benchmarks, the
# molecule scenarios and the pytest suites under tests/integration are
# tooling around it, not collection code (ansible-test would take them for
# modules or integration targets); ruff and ansible-lint cover them.
tree=.cache/sanity${QADHYA_SANITY_VENV:+-floor}/ansible_collections/qadhya/dbops
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard \
  | grep -zvE '^(lab|bench|molecule|tests/integration|\.ci)/' \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$tree" -xf -
cd "$tree"
git init -q && git add -A && git -c user.name=ci -c user.email=ci@invalid commit -qm tree
exec "$venv/bin/ansible-test" sanity --venv --python "$py" --color no "$@"
