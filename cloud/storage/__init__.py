"""The cloud database: training jobs and their steps and logs, API tokens, the deployment
history that MLflow lacks, and the reviewed labels the fabs upload.

``tables`` holds the ORM; one repository module per kind of record (keyword-only functions
taking a session) hands out plain records, never ORM objects. Schema changes go through the
Alembic revisions in ``migrations/``.
"""
