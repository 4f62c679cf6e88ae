"""Callbacks that watch a run in the frameworks people train with.

``deepdoctor.integrations.lightning.DeepDoctorCallback`` (PyTorch Lightning) and
``deepdoctor.integrations.transformers.DeepDoctorCallback`` (the Hugging Face Trainer).
Each module imports its framework; this package and deepdoctor itself import neither.
"""
