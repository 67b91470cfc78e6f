r"""Stage 3 off Ascend: ais_bench-compatible inference on ONNX Runtime, OpenVINO, PyTorch or ais_bench.

    python3 twins_pcpvt_s_infer.py --model twins_dynamic.onnx --input ./prep_dataset --output ./result \
        --outfmt BIN
    python3 twins_pcpvt_s_infer.py --model twins_dynamic.onnx --output ./ --loop 100 --batchsize 8
    python3 twins_pcpvt_s_infer.py --engine ray --ray-address auto --model twins_dynamic.onnx \
        --input /data/imagenet/val --output ./result --output_dirname run1 --batchsize 8

Takes ais_bench's flags (both generations in use) and writes its layout:
`<output>/<timestamp or --output_dirname>/<stem>_0.<fmt>` and `<output>/<same name>_summary.json`. Without
--input it runs pure inference on generated data. `--device 0,1` / `cuda:0,cuda:1` runs one process per
device. The backend follows the model file unless named: .om -> ais (Ascend NPU); .onnx -> OpenVINO when
installed, else ONNX Runtime (on a GPU device: ONNX Runtime with onnxruntime-gpu); .pth/.pt/.safetensors ->
torch. ais_bench flags that need an NPU (dynamic OM shapes, AIPP, profiling, dumps...) are refused in one
line. `--engine ray` runs folder inference as a Ray Data job on a local or existing Ray cluster
(docs/ray.md).

Exit status: 0 when every batch ran and its outputs and the summary were written, 1 when the run failed (a
missing or unreadable model or input, a runtime error, a file that cannot be written: one line naming it),
2 on bad usage (including ais_bench flags that need an NPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twins_pcpvt.backends import BACKENDS, COMPILE_MODES, PRECISIONS
from twins_pcpvt.cli import add_flag, boolean, make_parser, non_negative_int, positive_int
from twins_pcpvt.common import UsageError, run_main
from twins_pcpvt.infer.local import infer_command
from twins_pcpvt.infer.outputs import OUTPUT_FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, Path(__file__).name)
    ais = parser.add_argument_group("ais_bench's flags")
    ais.add_argument(
        "--model", "-m", required=True, metavar="PATH", help="model file: .onnx, .pth/.pt/.safetensors or .om"
    )
    ais.add_argument(
        "--input",
        "-i",
        metavar="DIR[,DIR|FILE...]",
        help="folders of .bin/.npy tensors and/or such files, comma-separated; omit for pure inference",
    )
    ais.add_argument(
        "--output", "-o", metavar="DIR", help="where to write outputs and the summary (omit: print only)"
    )
    ais.add_argument(
        "--output_dirname", metavar="NAME", help="output subfolder name (default: the start time)"
    )
    ais.add_argument(
        "--outfmt",
        default="BIN",
        type=str.upper,
        choices=OUTPUT_FORMATS,
        help="output file format (default: BIN)",
    )
    ais.add_argument(
        "--loop",
        "-l",
        type=positive_int,
        default=1,
        metavar="N",
        help="runs per batch with --input; number of batches in pure inference (default: 1)",
    )
    ais.add_argument(
        "--batchsize",
        type=positive_int,
        metavar="N",
        help="images per batch (default: the model's static batch, else 1)",
    )
    ais.add_argument(
        "--device",
        "-d",
        metavar="DEV[,DEV...]",
        help="cpu, cuda[:N], tensorrt[:N] (onnxruntime) or an NPU number (ais); several, comma-separated, "
        "run one process each; default: cpu / NPU 0",
    )
    ais.add_argument(
        "--warmup_count",
        "--warmup-count",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="untimed runs before measuring (default: 1)",
    )
    ais.add_argument(
        "--dymBatch",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="batch size of a dynamic-batch model (default: 0, off)",
    )
    ais.add_argument(
        "--pure_data_type",
        default="zero",
        choices=("zero", "random"),
        help="pure inference input: all-zero bytes (default) or random bytes",
    )
    ais.add_argument(
        "--display_all_summary",
        type=boolean,
        default=False,
        metavar="BOOL",
        help="also print the H2D/D2H copy times (default: false)",
    )
    ais.add_argument(
        "--debug", type=boolean, default=False, metavar="BOOL", help="print what was loaded (default: false)"
    )
    ais.add_argument(
        "--divide_input",
        type=boolean,
        default=None,
        metavar="BOOL",
        help="with several devices: true splits the inputs as ais_bench 2024 does, false runs all of them on "
        "every device (2024's layout); absent: split as ais_bench 2023 does",
    )
    npu = parser.add_argument_group(
        "ais_bench's NPU-only flags (accepted; refused unless left at their default)"
    )
    for flag, kind in (
        ("--dymHW", str),
        ("--dymDims", str),
        ("--dymShape", str),
        ("--outputSize", str),
        ("--acl_json_path", str),
        ("--dymShape_range", str),
        ("--aipp_config", str),
        ("--npu_id", int),
        ("--threads", int),
        ("--output_batchsize_axis", int),
        ("--run_mode", str),
    ):
        npu.add_argument(flag, type=kind, default=None, metavar="VALUE", help=argparse.SUPPRESS)
    for flag in (
        "--auto_set_dymshape_mode",
        "--auto_set_dymdims_mode",
        "--profiler",
        "--dump",
        "--energy_consumption",
        "--perf",
        "--pipeline",
        "--profiler_rename",
        "--dump_npy",
    ):
        npu.add_argument(flag, type=boolean, default=None, metavar="BOOL", help=argparse.SUPPRESS)
    npu.add_argument("--dym-shape", dest="dymShape", type=str, default=None, help=argparse.SUPPRESS)
    more = parser.add_argument_group("backend choice")
    more.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS, "trtexec"),
        help="runtime (default: auto, from the model file and device); unlike ais_bench 2024's --backend, "
        "which only takes trtexec",
    )
    more.add_argument(
        "--precision",
        default="auto",
        choices=("auto", *PRECISIONS),
        help="inference precision (default: auto, the hardware's native reduced precision where it has one, "
        "e.g. bf16 on CPUs with AVX-512 BF16, fp16 on NVIDIA GPUs; fp32 is the strict reference); "
        "the summary records what actually ran",
    )
    more.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help="torch: run torch.compile first (MODE default: 'default')",
    )
    add_flag(
        more,
        "--no-cuda-graph",
        action="store_true",
        help="torch on CUDA: run eagerly instead of replaying a captured CUDA graph",
    )
    add_flag(more, "--no-progress", action="store_true", help="hide the progress bar")
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this process (default); ray: a Ray Data job, one model actor per --device entry, "
        "--input may also be a folder of images (needs ray[data]; see docs/ray.md)",
    )
    add_flag(
        engine,
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: join this Ray cluster (default: start a local one for the run)",
    )
    return parser


def run(args) -> int:
    if args.engine == "ray":
        from twins_pcpvt.infer import ray_engine

        return ray_engine.infer_command(args)
    if args.ray_address is not None:
        raise UsageError("--ray-address needs --engine ray")
    return infer_command(args)


def main(argv: list[str] | None = None) -> int:
    program = sys.argv[0] if argv is None else __file__
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = build_parser().parse_args(argv)
    args.command_line = [program, *argv]  # the summary's `args`, as ais_bench records sys.argv
    return run_main(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
