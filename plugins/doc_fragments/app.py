# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # How the modules that stop and start the app container (app_container,
    # app_switch) reach the engine and treat the container: one argument spec
    # (_container.container_argument_spec), one description.
    DOCUMENTATION = r"""
options:
  stop_timeout:
    description: Seconds Docker waits after SIGTERM before killing the app when stopping or restarting it.
    type: int
    default: 10
  validate_certs:
    description: Verify the TLS certificate of an C(https) O(health_url).
    type: bool
    default: true
  allow_anonymous_volumes:
    description:
      - Allow a recreate although the container has anonymous volumes. Their content stays in the
        (orphaned) old volumes and the new container gets new, empty ones; use it only when that content
        is disposable. Better, give such volumes a name.
    type: bool
    default: false
  docker_host:
    description:
      - Docker Engine endpoint, C(unix:///path/to/docker.sock) or C(tcp://host:port) (no TLS).
      - Defaults to the E(DOCKER_HOST) environment variable of the module, else the local socket
        C(unix:///var/run/docker.sock).
    type: str
"""
