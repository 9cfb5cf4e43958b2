#!/usr/bin/env bash
# Subset of the official postgres image's entrypoint, enough for the lab.
set -Eeuo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"
export POSTGRES_USER POSTGRES_DB PGDATA

log() { echo "entrypoint: $*" >&2; }

prepare_dirs_as_root() {
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    # Only touch files that are not ours yet: keeps restarts fast on big data dirs.
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
}

init_cluster() {
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "POSTGRES_PASSWORD is required to initialise a new cluster"
        exit 1
    fi
    local pwfile
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    cat > "$PGDATA/pg_hba.conf" <<'HBA'
local all all trust
host all all 127.0.0.1/32 trust
host all all all scram-sha-256
HBA
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
}

psql_init() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
}

run_init_scripts() {
    # Unix socket only: nobody (not even the healthcheck) sees a half-initialised server.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
        # Via stdin: psql -c does not interpolate :"db" (quoted identifier).
        echo 'CREATE DATABASE :"db"' | psql_init --dbname postgres --set db="$POSTGRES_DB" >/dev/null
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        log "running $f"
        case "$f" in
            *.sh)     if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql)    psql_init --dbname "$POSTGRES_DB" -f "$f" >/dev/null ;;
            *.sql.gz) gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" >/dev/null ;;
            *)        log "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
}

if [ "${1:-}" = "postgres" ] && [ "$(id -u)" = "0" ]; then
    prepare_dirs_as_root
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    init_cluster
    run_init_scripts
    log "init complete"
fi

# exec: postgres becomes PID 1 and receives docker's stop signal directly.
exec "$@"
