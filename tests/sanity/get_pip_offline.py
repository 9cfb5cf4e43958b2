"""Offline replacement for the get-pip.py bootstrap that ansible-test downloads.

ansible-test looks for a cached bootstrap script before downloading one.
This script installs the pip bundled with the interpreter (ensurepip), then
lets that pip install the exact packages ansible-test asked for from the
package index. get-pip's "--no-setuptools"/"--no-wheel" only mean "do not
add those packages", which plain pip never does, so they are dropped.
"""

import ensurepip
import os
import runpy
import sys

# ensurepip points PIP_CONFIG_FILE at /dev/null and drops the PIP_* variables
# of this process; the pip run below must see the machine's pip configuration
# (certificate bundle, local indexes) again, or an older pip without the
# system's trust store cannot reach the index.
environ = dict(os.environ)
ensurepip.bootstrap(upgrade=True)
os.environ.clear()
os.environ.update(environ)
requested = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.argv = ["pip", "install", "--upgrade", *requested]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
