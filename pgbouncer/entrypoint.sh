#!/bin/sh
# Render the config from PGBOUNCER_* settings, then run PgBouncer in the foreground.
# Logs go to stderr too, for `docker compose logs`.
set -eu
python3 /opt/pgbouncer/render.py --out /etc/pgbouncer
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
