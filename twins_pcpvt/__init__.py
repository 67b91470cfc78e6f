"""Twins-PCPVT-Small deployment toolkit: preprocessing, ONNX export, inference on many runtimes, accuracy."""

__version__ = "0.1.0"
