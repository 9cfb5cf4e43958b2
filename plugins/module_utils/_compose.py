# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Docker Compose says about a container, and how to ask it to recreate one (private).

Pure functions over ``docker inspect`` labels and ``docker compose``
output; the ``app_container`` logic (``_container``) runs the commands.
"""

from __future__ import annotations

import re

# Labels Docker Compose v2 puts on the containers of a project's services.
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_WORKING_DIR = "com.docker.compose.project.working_dir"
COMPOSE_CONFIG_FILES = "com.docker.compose.project.config_files"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"


def compose_service(info):
    """The Compose project and service a container belongs to, from its labels, or None.

    A one-off container (``docker compose run``) is no service container.
    """
    labels = (info.get("Config") or {}).get("Labels") or {}
    project, service = labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)
    if not project or not service or labels.get(COMPOSE_ONEOFF) == "True":
        return None
    files = [item for item in (labels.get(COMPOSE_CONFIG_FILES) or "").split(",") if item]
    return dict(project=project, service=service, working_dir=labels.get(COMPOSE_WORKING_DIR) or None,
                config_files=files)


def compose_recreate_argv(service, dry_run=False):
    """``docker compose`` arguments recreating one service the way its operator would.

    No ``--no-deps``: Compose 2.26 then labels the new container with a config
    hash lacking its ``depends_on`` (docker/compose#12069), and the next plain
    ``docker compose up -d`` recreates it again. Without it, dependencies are
    only started if stopped, and recreated only when their own configuration
    diverged, which the dry run (``dry_run=True``) finds before any change.
    """
    argv = ["compose", "-p", service["project"]]
    for path in service["config_files"]:
        argv.extend(["-f", path])
    if service["working_dir"]:
        argv.extend(["--project-directory", service["working_dir"]])
    argv.extend(["up", "-d", "--force-recreate", service["service"]])
    if dry_run:
        argv.insert(argv.index("up") + 1, "--dry-run")
    return argv


_DRY_RUN_RE = re.compile(r"Container (\S+)\s+(Recreate|Create|Start)$")


def compose_dry_run_others(output, own_name):
    """Containers other than ``own_name`` a dry run of the recreate would recreate, create or start."""
    others = []
    for line in (output or "").splitlines():
        match = _DRY_RUN_RE.search(line.strip())
        if not match:
            continue
        name = match.group(1)
        # the dry run names the container being replaced "<short id>_<name>"
        if name == own_name or name.endswith("_" + own_name):
            continue
        item = "%s (%s)" % (name, match.group(2).lower())
        if item not in others:
            others.append(item)
    return others
