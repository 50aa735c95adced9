#!/usr/bin/env bash
# Create the portfolio store's database and role, separate from Airflow's metadata database.
#
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d), when the data volume is
# empty. To re-run it, remove the volume: docker compose down -v.
#
# Keeping the portfolio tables in their own database, owned by their own role, means Airflow's
# `airflow db migrate`/`db clean` never touch them and the store's credentials can read nothing of
# Airflow's. Settings (from docker-compose.yaml / .env):
#   PORTFOLIO_DB_NAME (default portfolio), PORTFOLIO_DB_USER (default portfolio),
#   PORTFOLIO_DB_PASSWORD (required), POSTGRES_USER (the superuser the image created).
# psql finds the server from the usual PG* variables; inside the image that is the init server's
# local socket.
set -euo pipefail

db="${PORTFOLIO_DB_NAME:-portfolio}"
role="${PORTFOLIO_DB_USER:-portfolio}"
password="${PORTFOLIO_DB_PASSWORD:?PORTFOLIO_DB_PASSWORD is not set}"

# psql's :'var' / :"var" quote the values as a literal / an identifier, so names and passwords with
# quotes or spaces cannot break out of the statements.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v db="$db" -v role="$role" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT ALL ON DATABASE :"db" TO :"role";
SQL
echo "portfolio store database ${db} (owner ${role}) is ready"
