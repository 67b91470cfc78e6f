"""Twins-PCPVT-Small deployment toolkit: preprocessing, ONNX export, inference on many runtimes, accuracy.

Which module owns which concern:

- `data/`: manifest, class map, reference transform, untrusted image decoding, tensor files, discovery, the
  preprocess stage and its worker processes (the map of its modules is in `data/__init__.py`)
- `results`: finding and reading inference result folders, the output decoders, the replica check, split runs
- `labels`: label files and manifests read as labels
"""

__version__ = "0.1.0"
