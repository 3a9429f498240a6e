#!/bin/sh
# docker-entrypoint-initdb.d hook of the evaluation stack (docker-compose.yml): runs setup.sql once, on an
# empty data directory, with passwords from the container environment.
set -eu
psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$OEE_DB_OWNER_PASSWORD" \
  -v writer_password="${OEE_DB_WRITER_PASSWORD:-$OEE_DB_OWNER_PASSWORD-writer}" \
  -v api_password="${OEE_DB_API_PASSWORD:-$OEE_DB_OWNER_PASSWORD-api}" \
  -v grafana_password="$OEE_GRAFANA_DB_PASSWORD" \
  -f /opt/oee/setup.sql
