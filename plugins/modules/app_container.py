#!/usr/bin/python
# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_container
short_description: Stop the app container, or start it with the wanted env and wait until it serves
version_added: 0.1.0
author: qadhya platform team (@qadhya)
description:
  - Stops an existing application container, or brings it up so that its running process uses the
    wanted environment values, then waits until Docker reports it healthy and the health URL answers
    HTTP 200 - all in one task, to keep the app's downtime short.
  - "How the env reaches the app decides what a start needs. When a bind mount of the container
    covers O(env_file) (the file itself or its directory), the app reads that file when it starts, so
    a restart is enough (env mode C(mounted)). Otherwise the container took its env when it was
    created (C(docker run --env-file), or Compose's C(env_file:)), it is fixed in C(Config.Env), and
    only a new container changes it (env mode C(created), or C(compose) for a Compose service)."
  - A recreate keeps the container's exact configuration (image, command, entrypoint, labels,
    healthcheck, exposed and published ports, binds and mounts, restart policy, log config, networks
    with their aliases and static addresses, user, working dir, ...); only the env values of O(env) are
    replaced or appended. The old container is renamed to C(<name>.dbops-previous) and kept stopped
    until the new one is healthy and answers 200, then removed. If the new one fails, it is removed,
    the old one gets its name back and stays stopped (the caller decides what to do next, typically a
    rollback that starts it again with the old env), and the module fails with one line giving the
    health status, the last health check output and the HTTP status.
  - After the start, the module proves the app uses the wanted values (RV(effective_env)) - in mode
    C(created) and C(compose) from the new container's C(Config.Env), in mode C(mounted) from the env
    file as read inside the container - and, when the health URL returns JSON with a C(database) key,
    that it equals the C(DB_NAME) of O(env).
  - A recreate refuses to run when the container keeps data in anonymous volumes (a new container
    would start with new, empty ones) unless O(allow_anonymous_volumes=true), and when the image tag in
    its configuration now points to another image than the one it runs.
  - "A container managed by Docker Compose (labels C(com.docker.compose.project), C(.service),
    C(.project.working_dir), C(.project.config_files)) that must get new env values is recreated by
    Compose itself, that service only - C(docker compose -p <project> -f <config files>
    --project-directory <working dir> up -d --force-recreate <service>) - so it stays that service and a
    later C(docker compose up -d) changes nothing (env mode C(compose)). Before any change (at the stop,
    or before the recreate of a running app) a C(--dry-run) of that command must show that no other
    container of the project would be created or recreated (pending changes to the database service,
    say); C(--no-deps) is not used, because Compose 2.26 then labels the new container with another
    config hash and the next C(docker compose up -d) recreates it again (docker/compose#12069). Compose
    gives the new container what the service's C(env_file:) says, read with Compose's own C(.env) rules
    (quotes removed, a C( # comment) after an unquoted value ignored); when O(env_file) is given, the
    module fails before any change if that file does not hold the values of O(env). Compose does not
    recreate a service whose C(env_file) content alone changed, which is why the module asks for the
    recreate. This needs the C(docker) CLI with the Compose v2 plugin on the Docker host, and the
    project's config files there."
  - Talks to the Docker Engine API directly (unix socket, standard library only); no Docker SDK for
    Python is needed on the Docker host.
options:
  name:
    description: Name of the existing container.
    type: str
    required: true
  state:
    description:
      - V(stopped) stops the container (nothing to do if it is not running).
      - V(started) makes it run with the values of O(env), healthy and answering 200 on O(health_url).
        A container that already does so is left alone (C(changed=false)).
    type: str
    required: true
    choices: [stopped, started]
  env:
    description:
      - "Environment values the running app must see, for example C({DB_NAME: qadhya})."
      - Values whose key looks secret (C(PASSWORD), C(SECRET), C(TOKEN), ...) are masked in the results.
      - In mode C(mounted) the module does not write O(env_file); update it first (role
        C(qadhya.dbops.update_env)), the module fails before any change if the file does not hold
        these values.
    type: dict
    default: {}
  env_file:
    description:
      - Path on the Docker host of the app's env file. Used to find out whether the container reads it
        through a bind mount (mode C(mounted)), and to read it.
      - Without it, the container is treated as having taken its env at creation.
    type: path
  strategy:
    description:
      - V(auto) restarts when that is enough (the env file is mounted, or C(Config.Env) already holds the
        values) and recreates otherwise.
      - V(restart) only starts or restarts; it fails before any change when the container took its env
        at creation and that env lacks the values.
      - V(recreate) creates a new container from the old one's configuration with the new env values.
    type: str
    default: auto
    choices: [auto, restart, recreate]
  health_url:
    description:
      - URL that must answer HTTP 200 before the module succeeds, polled once Docker's health status is
        C(healthy). Empty means no HTTP check.
    type: str
  health_timeout:
    description: Seconds to wait, from the start, for the container to be healthy and the URL to answer 200.
    type: int
    default: 60
  wait_healthy:
    description:
      - Wait until Docker reports the container C(healthy) when it has a healthcheck. Without a
        healthcheck (or with V(false)) being running is enough.
    type: bool
    default: true
notes:
  - Supports check mode - the container is inspected and the plan reported in RV(strategy) and
    RV(would); nothing is stopped, started or created, and the health URL is only read. A mounted env
    file that does not hold the values yet (its update was only checked too) gives a warning, not a
    failure.
  - The previous container keeps the name C(<name>.dbops-previous) during a recreate; if one is
    left over (the module was killed), the module refuses to go on and says how to clean up.
  - In mode C(mounted), replacing the env file with a new inode (editors, atomic writes) is seen by a
    container that mounts the file's directory at once, and by one that mounts the file itself only
    after its restart.
requirements:
  - Access to the Docker Engine socket on the host the module runs on.
  - For a container managed by Docker Compose, the C(docker) CLI with the Compose v2 plugin.
seealso:
  - module: community.docker.docker_container
extends_documentation_fragment:
  - qadhya.dbops.app
  - qadhya.dbops.attributes
  - qadhya.dbops.attributes.NO_DIFF
  - qadhya.dbops.attributes.JOURNAL
"""

EXAMPLES = r"""
- name: Stop the app before the rename
  qadhya.dbops.app_container:
    name: qadhya-nextjs
    state: stopped

- name: Start the app on the renamed database and wait for health 200
  qadhya.dbops.app_container:
    name: qadhya-nextjs
    state: started
    env:
      DB_NAME: qadhya
    env_file: /opt/moncabinet/.env
    health_url: http://127.0.0.1:3000/api/health
    health_timeout: 60
  register: app

- name: Force a new container (the app took its env at creation)
  qadhya.dbops.app_container:
    name: qadhya-nextjs
    state: started
    strategy: recreate
    env:
      DB_NAME: qadhya
    health_url: http://127.0.0.1:3000/api/health
"""

RETURN = r"""
strategy:
  description: How the container was (or in check mode would be) brought up; V(none) when nothing was done.
  returned: always
  type: str
  sample: recreate
action:
  description: What was done - V(started), V(restarted), V(recreated), V(stopped) or V(none).
  returned: always
  type: str
  sample: recreated
would:
  description: In check mode, the action a real run would take.
  returned: in check mode, when something would change
  type: str
  sample: restarted
env_mode:
  description:
    - V(mounted) when the container reads O(env_file) through a bind mount, V(compose) for a service
      container of a Docker Compose project, V(created) otherwise.
  returned: when state=started
  type: str
  sample: created
health_status:
  description:
    - Docker's health status at the end (V(healthy), V(starting), V(unhealthy)).
    - V(running) for a container without healthcheck.
  returned: always
  type: str
  sample: healthy
http_status:
  description: Last HTTP status of O(health_url), null if it was not queried or did not answer.
  returned: always
  type: int
  sample: 200
health_body:
  description: The C(status), C(database) and C(documents) keys of the health URL's JSON answer, when present.
  returned: when the health URL answered 200 with JSON
  type: dict
  sample: {"status": "ok", "database": "qadhya", "documents": 580}
effective_env:
  description: Values of the keys of O(env) as the running app sees them (secret-looking keys masked).
  returned: always
  type: dict
  sample: {"DB_NAME": "qadhya"}
elapsed_s:
  description:
    - Seconds from the first stop/start/restart/create call to healthy and HTTP 200.
    - For O(state=stopped), the duration of the stop.
  returned: always
  type: float
  sample: 1.42
timings:
  description:
    - Seconds since the first action at which each step ended.
    - Keys among C(stop), C(create), C(start), C(restart), C(healthy), C(http_200).
  returned: always
  type: dict
  sample: {"start": 0.21, "healthy": 1.12, "http_200": 1.14}
previous_config_diff:
  description:
    - For a recreate, the inspect paths that differ between the old and the new container. Only C(Id),
      C(Created) and C(Config.Env) may differ; anything else makes the module fail and restore the old one.
  returned: always
  type: list
  elements: str
  sample: ["Config.Env", "Created", "Id"]
compose:
  description:
    - For a Compose service container, its C(project) and C(service); after a recreate also the
      C(cmd) that ran and the Compose C(version).
  returned: when the container belongs to a Compose project and state=started
  type: dict
  sample: {"project": "moncabinet", "service": "nextjs", "version": "2.26.1"}
container_id:
  description: Id of the container that has O(name) at the end.
  returned: always
  type: str
  sample: 4f1c0a9e2b7d...
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.qadhya.dbops.plugins.module_utils._container import (
    AppContainer,
    ContainerError,
    DockerCLI,
    HealthProbe,
    container_argument_spec,
)
from ansible_collections.qadhya.dbops.plugins.module_utils._engine_api import DockerAPI, DockerAPIError
from ansible_collections.qadhya.dbops.plugins.module_utils._journal import (
    JournalError,
    ModuleJournal,
    journal_argument_spec,
)


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", required=True, choices=["stopped", "started"]),
        env=dict(type="dict", default={}),
        env_file=dict(type="path"),
        **container_argument_spec(),
        **journal_argument_spec()
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    for key in ("health_timeout", "stop_timeout"):
        if params[key] < 0:
            module.fail_json(msg="%s must be 0 or more seconds, got %s" % (key, params[key]))
    for key in params["env"]:
        if not key or "=" in key:
            module.fail_json(msg="env key %r is invalid: it must be non-empty and contain no '='" % key)
    try:
        api = DockerAPI(params.get("docker_host"))
    except DockerAPIError as exc:
        module.fail_json(msg=str(exc))
    manager = AppContainer(params, api, HealthProbe(params["validate_certs"]), check_mode=module.check_mode,
                           journal=ModuleJournal(module),
                           docker_cli=DockerCLI(module, params.get("docker_host")))
    try:
        result = manager.run()
    except ContainerError as exc:
        partial = dict(manager.result)
        partial.update(exc.details)
        module.fail_json(msg=str(exc), **partial)
    except DockerAPIError as exc:
        module.fail_json(msg="Docker engine error on container %s: %s" % (params["name"], exc),
                         **manager.result)
    except JournalError as exc:
        module.fail_json(msg=str(exc), **manager.result)
    warnings = result.pop("warnings", [])
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
