-- oee-stream database setup, run once by a superuser before the first start:
--
--   psql -v ON_ERROR_STOP=1 -d postgres \
--        -v owner_password="$OWNER_PW" -v writer_password="$WRITER_PW" \
--        -v api_password="$API_PW" -v grafana_password="$GRAFANA_PW" \
--        -f deploy/timescaledb/setup.sql
--
-- Re-running it is safe: it creates what is missing and resets the passwords.
-- Creates the database `oee` owned by `oee_owner`, the TimescaleDB extension, the NOLOGIN group roles the
-- migrations grant (oee_writer, oee_api, oee_grafana; the migrations create them too when missing) and one
-- LOGIN role per client, each a member of its group:
--
--   oee_owner          owns the schema; `oee-stream migrate` and `oee-stream run` (which migrates on start)
--   oee_writer_login   in oee_writer: insert/update results and samples (a split-out writer)
--   oee_api_login      in oee_api: read-only (a split-out API)
--   oee_grafana_login  in oee_grafana: read-only, Grafana's datasource (deploy/grafana)

\set ON_ERROR_STOP 1

SELECT 'CREATE ROLE oee_writer NOLOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_writer')
\gexec
SELECT 'CREATE ROLE oee_api NOLOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_api')
\gexec
SELECT 'CREATE ROLE oee_grafana NOLOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_grafana')
\gexec

SELECT format('CREATE ROLE oee_owner LOGIN PASSWORD %L IN ROLE oee_writer, oee_api', :'owner_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_owner')
\gexec
SELECT format('CREATE ROLE oee_writer_login LOGIN PASSWORD %L IN ROLE oee_writer', :'writer_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_writer_login')
\gexec
SELECT format('CREATE ROLE oee_api_login LOGIN PASSWORD %L IN ROLE oee_api', :'api_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_api_login')
\gexec
SELECT format('CREATE ROLE oee_grafana_login LOGIN PASSWORD %L IN ROLE oee_grafana', :'grafana_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oee_grafana_login')
\gexec

-- Passwords are reset on every run (rotation: run again with new values).
ALTER ROLE oee_owner PASSWORD :'owner_password';
ALTER ROLE oee_writer_login PASSWORD :'writer_password';
ALTER ROLE oee_api_login PASSWORD :'api_password';
ALTER ROLE oee_grafana_login PASSWORD :'grafana_password';
-- Membership also when the login roles existed before (IN ROLE only applies at creation).
GRANT oee_writer TO oee_owner;
GRANT oee_api TO oee_owner;
GRANT oee_writer TO oee_writer_login;
GRANT oee_api TO oee_api_login;
GRANT oee_grafana TO oee_grafana_login;
-- Grafana must not be able to hurt the database with a heavy ad-hoc query.
ALTER ROLE oee_grafana_login SET statement_timeout = '30s';
ALTER ROLE oee_grafana_login SET default_transaction_read_only = on;
ALTER ROLE oee_api_login SET default_transaction_read_only = on;

SELECT 'CREATE DATABASE oee OWNER oee_owner' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'oee')
\gexec
REVOKE ALL ON DATABASE oee FROM PUBLIC;
GRANT CONNECT ON DATABASE oee TO oee_writer, oee_api, oee_grafana;

\connect oee
-- TimescaleDB needs shared_preload_libraries = 'timescaledb' (the timescale/timescaledb image sets it). On a
-- plain PostgreSQL without the package it is skipped: oee-stream then uses ordinary tables and views with the same names.
SELECT 'CREATE EXTENSION IF NOT EXISTS timescaledb'
WHERE EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
\gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO oee_owner;
GRANT USAGE ON SCHEMA public TO oee_writer, oee_api, oee_grafana;
-- Tables of future migrations get the same grants without waiting for the next start.
ALTER DEFAULT PRIVILEGES FOR ROLE oee_owner IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO oee_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE oee_owner IN SCHEMA public GRANT USAGE ON SEQUENCES TO oee_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE oee_owner IN SCHEMA public GRANT SELECT ON TABLES TO oee_api, oee_grafana;
