-- The sidecar's own role and schema in authentik's database, made by the
-- ssf-db-init service of docker-compose.replicas.yml (run as authentik's
-- database owner). Safe to run again: it changes only the password.
--
--   SIDECAR_PG_PASS=... psql -v ON_ERROR_STOP=1 -f ssf-sidecar-init.sql
--
-- The role may log in and owns its schema, nothing more: no superuser, no
-- CREATE on the database, no right on authentik's tables. Its name and the
-- schema's are ssf_sidecar unless -v role=... and -v schema=... say others.
\set ON_ERROR_STOP on
\getenv password SIDECAR_PG_PASS
\if :{?role}
\else
  \set role ssf_sidecar
\endif
\if :{?schema}
\else
  \set schema ssf_sidecar
\endif
SELECT format('CREATE ROLE %I LOGIN', :'role')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" PASSWORD :'password';
CREATE SCHEMA IF NOT EXISTS :"schema" AUTHORIZATION :"role";
