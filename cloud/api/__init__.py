"""The cloud's REST API (FastAPI): training jobs, the model registry, deployments."""
