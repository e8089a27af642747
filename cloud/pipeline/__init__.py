"""The retraining pipeline: one Celery task per step, each idempotent, its state in the database."""
