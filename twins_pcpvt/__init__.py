"""Twins-PCPVT-Small deployment toolkit: preprocessing, ONNX export, inference on several backends, accuracy."""

__version__ = "0.1.0"
