"""The model registry on MLflow (versions, aliases) and the deployment history MLflow lacks."""
