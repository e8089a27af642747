"""Training: configs, data pipeline, losses, the trainer, calibration."""
