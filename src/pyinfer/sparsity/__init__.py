"""Training-free activation sparsity (CATS) for SwiGLU models without a predictor.

``python -m pyinfer.sparsity calibrate MODEL.gguf --sparsity 0.5 -o OUT.gguf`` runs the
model densely over calibration text, picks per layer the |silu(gate)| threshold below
which the target fraction of FFN neurons falls, and writes a copy of the GGUF with
those thresholds under ``pyinfer.sparsity.*`` keys. Loading that copy runs the CATS
sparse FFN (model/sparse.py); ``dense=True`` runs it densely.
"""
from .calibrate import CalibrationResult, calibrate, collect_activations, write_calibrated

__all__ = ["CalibrationResult", "calibrate", "collect_activations", "write_calibrated"]
