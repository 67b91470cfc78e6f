"""A static-batch copy of a dynamic ONNX model: what ATC compiles into an OM, and what static tests need.

Only the graph's input and output batch dimensions change.
"""

from __future__ import annotations

from pathlib import Path

_made: dict[tuple[str, int, str], Path] = {}  # files written in this run, by (source, batch, target)


def static_copy(source: Path, target: Path, batch: int) -> Path:
    """Write `source` with its batch axis fixed to `batch` to `target` (any suffix: .om for the stand-in)."""
    key = (str(source), batch, str(target))
    if key in _made and _made[key].exists():
        return _made[key]
    import onnx

    model = onnx.load(str(source))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(target))
    _made[key] = Path(target)
    return Path(target)


def onnx_batch_size(onnx_path: Path) -> int | None:
    """The fixed batch size of the file's input, or None when the batch axis is dynamic."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None
