"""The shipped models, installed as the package ``wafer_models``: data only, no code.

Each folder holds one model (``model.onnx``, ``model.json``, report and model card); find one
with `wafercore.shipped.shipped_model_dir`.
"""
