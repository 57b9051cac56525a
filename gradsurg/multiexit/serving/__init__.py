"""Serving a saved multi-exit model: loading, batched prediction on texts, timed evaluation.

``gradsurg predict`` and ``gradsurg eval`` are built from these; every pass goes through the
layer-by-layer exit loop, so reported times are what early exit really costs.
"""

from gradsurg.multiexit.serving.loaded_model import (
    LoadedModel,
    check_max_length,
    check_model_folder,
    load_for_inference,
)
from gradsurg.multiexit.serving.predict import predict_texts
from gradsurg.multiexit.serving.textio import InputText, open_output, read_texts, write_prediction
from gradsurg.multiexit.serving.timed_eval import EvalReport, evaluate_split

__all__ = [
    "EvalReport",
    "InputText",
    "LoadedModel",
    "check_max_length",
    "check_model_folder",
    "evaluate_split",
    "load_for_inference",
    "open_output",
    "predict_texts",
    "read_texts",
    "write_prediction",
]
