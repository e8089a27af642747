-- Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER (wafer), after it has created POSTGRES_DB (fab): the cloud tier's database and
-- MLflow's backend store. Each tier migrates its own schema (Alembic) when it starts.
CREATE DATABASE cloud OWNER wafer;
CREATE DATABASE mlflow OWNER wafer;
