"""The rules on the infer flags that need no file: the ais_bench flags only an NPU can honour, combinations of
flags, the runner options they ask for and the batch size they settle with the model."""

from __future__ import annotations

from ..common import UsageError
from .outputs import check_output_names

# ais_bench flags that drive machinery only an NPU has (dynamic shapes of OM models, AIPP, profiling, dumps,
# power readings, its C++ pipeline): accepted by the parser, refused unless left at ais_bench's default.
NPU_ONLY_FLAGS = {
    "dymHW": None,
    "dymDims": None,
    "dymShape": None,
    "outputSize": None,
    "auto_set_dymshape_mode": False,
    "auto_set_dymdims_mode": False,
    "profiler": False,
    "dump": False,
    "acl_json_path": None,
    "dymShape_range": None,
    "aipp_config": None,
    "energy_consumption": False,
    "npu_id": 0,
    "perf": False,
    "pipeline": False,
    "profiler_rename": True,
    "dump_npy": False,
    "threads": 1,
    "run_mode": "array",
    "output_batchsize_axis": 0,
}


def check_flags(args) -> None:
    """Usage errors that need no file: combinations of flags, and the NPU-only flags (each value's range is
    the parser's, through the argument types of `cli`)."""
    if args.dymBatch and args.batchsize and args.batchsize != args.dymBatch:
        raise UsageError(f"--batchsize {args.batchsize} and --dymBatch {args.dymBatch} disagree")
    if args.backend == "trtexec":
        raise UsageError(
            "--backend trtexec is ais_bench 2024's TensorRT benchmark; here --backend names the runtime "
            "(auto, onnxruntime, openvino, torch, ais): for TensorRT use --backend onnxruntime "
            "--device tensorrt"
        )
    for name, default in NPU_ONLY_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None and value != default:
            raise UsageError(
                f"--{name} {value}: an NPU feature of ais_bench that this off-Ascend runner lacks "
                "(run python3 -m ais_bench on the NPU for it)"
            )
    if args.output_dirname is not None and args.output is None:
        raise UsageError("--output_dirname cannot be used alone: give --output too")
    check_output_names(args.output, args.output_dirname)


def runner_options(args) -> dict:
    """The runner options the flags ask for (`--compile`, `--no-cuda-graph`), for `create_runner`."""
    options = {}
    if getattr(args, "compile", None):
        options["compile"] = args.compile
    if getattr(args, "no_cuda_graph", False):
        options["cuda_graph"] = False
    return options


def requested_batch(args) -> int | None:
    """The batch size the flags ask for (`--batchsize`, else `--dymBatch`); None leaves it to the model."""
    return args.batchsize or args.dymBatch or None


def settle_batch_size(
    model, static: int | None, requested: int | None, *, dym_batch: int | None = None
) -> int:
    """The batch size a run uses: the one asked for, else the model's fixed batch (`static`), else 1. A
    model whose batch is fixed refuses `--dymBatch` and any other batch size."""
    if static is not None and dym_batch:
        raise UsageError(
            f"{model}: --dymBatch needs a dynamic-batch model; this one takes batches of {static}"
        )
    if static is not None and requested is not None and requested != static:
        raise UsageError(
            f"{model}: the model takes batches of exactly {static}; --batchsize "
            f"{requested} does not fit (export a dynamic-batch model, or one for this batch)"
        )
    return requested or static or 1
