#!/bin/sh
# Stand-ins for the public postgres, redis and nginx images, for docker/compose.local.yaml
# on hosts that cannot reach a registry: Debian's own servers in
# armwheels/local-services:bookworm (builder/image.py), started as those images start
# theirs, as far as docker/compose.yaml uses them. Each listens on loopback only: the
# override runs every service in the host's network.
#   local-services.sh postgres | nginx | redis redis-server ARGS...
set -eu

as() {  # as USER COMMAND...: run COMMAND in this process as USER
    user=$1
    shift
    exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"
}

case "${1:-}" in
postgres)
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    data=${PGDATA:-/var/lib/postgresql/data}
    port=${PGPORT:-5432}
    mkdir -p "$data"
    chown postgres:postgres "$data"
    chmod 0700 "$data"
    if [ ! -s "$data/PG_VERSION" ]; then
        # The official image's first start: a cluster whose superuser is POSTGRES_USER
        # with the password of POSTGRES_PASSWORD_FILE, and POSTGRES_DB.
        password=$(mktemp)
        cat "${POSTGRES_PASSWORD_FILE:?}" >"$password"
        chown postgres "$password"
        setpriv --reuid=postgres --regid=postgres --init-groups "$bin/initdb" -D "$data" \
            -U "${POSTGRES_USER:?}" --pwfile="$password" --encoding=UTF8 --locale=C.UTF-8 \
            --auth-local=trust \
            --auth-host=scram-sha-256 >/dev/null
        rm -f "$password"
        setpriv --reuid=postgres --regid=postgres --init-groups "$bin/pg_ctl" -D "$data" -w \
            -o "-c listen_addresses='' -c unix_socket_directories=/tmp -p $port" start >/dev/null
        setpriv --reuid=postgres --regid=postgres --init-groups "$bin/psql" -q -h /tmp \
            -p "$port" -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"${POSTGRES_DB:?}\""
        setpriv --reuid=postgres --regid=postgres --init-groups "$bin/pg_ctl" -D "$data" -w \
            stop >/dev/null
    fi
    as postgres "$bin/postgres" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories=/tmp
    ;;
redis)
    shift
    mkdir -p /data
    chown redis:redis /data
    cd /data
    as redis "$@" --bind 127.0.0.1 --dir /data
    ;;
nginx)
    port=${ARMWHEELS_INDEX_PORT:-8080}
    mkdir -p /run/armwheels-nginx
    sed "s/listen 8080;/listen 127.0.0.1:$port;/" /etc/nginx/conf.d/armwheels.conf \
        >/run/armwheels-nginx/armwheels.conf
    cat >/run/armwheels-nginx/nginx.conf <<CONF
user www-data;
pid /run/armwheels-nginx/nginx.pid;
error_log stderr;
events {}
http {
    include /etc/nginx/mime.types;
    access_log off;
    include /run/armwheels-nginx/armwheels.conf;
}
CONF
    exec nginx -c /run/armwheels-nginx/nginx.conf -g 'daemon off;'
    ;;
*)
    echo "usage: local-services.sh postgres | nginx | redis redis-server ARGS..." >&2
    exit 2
    ;;
esac
