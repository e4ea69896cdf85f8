-- Runs once, when the PostgreSQL data directory is first created (docker-entrypoint-initdb.d).
-- The tracking store uses the database POSTGRES_DB (mlflow); basic auth keeps its users apart.
CREATE DATABASE mlflow_auth OWNER mlflow;
