# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  db_container:
    description:
      - Name of the Docker container running PostgreSQL.
      - When O(login_host) is empty, the module connects to this container's
        address on its Docker network, so no port needs to be published.
      - Programs that must match the server version (C(pg_dump), C(psql),
        C(pg_restore)) run inside this container with C(docker exec).
    type: str
  login_host:
    description:
      - Host name or address of the PostgreSQL server.
      - Empty means the address of O(db_container).
    type: str
  login_port:
    description: Port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description: Role used to connect. It needs to see every database it works on.
    type: str
    default: postgres
  login_password:
    description:
      - Password of O(login_user). Never logged, never put on a command line.
    type: str
  maintenance_db:
    description: Database to connect to for server-wide work (listing, rename, drop).
    type: str
    default: postgres
  connect_timeout:
    description: Seconds to wait for a connection before failing.
    type: int
    default: 10
  docker_bin:
    description: Name or path of the Docker CLI on the Docker host.
    type: str
    default: docker
requirements:
  - psycopg2 on the Docker host (the host the module runs on)
  - the Docker CLI on the Docker host
"""
