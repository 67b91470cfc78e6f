"""Stage 3 off Ascend: ais_bench-compatible inference on ONNX Runtime, OpenVINO, PyTorch or ais_bench.

    python3 twins_pcpvt_s_infer.py --model twins_dynamic.onnx --input ./prep_dataset --output ./result \
        --outfmt BIN
    python3 twins_pcpvt_s_infer.py --model twins_dynamic.onnx --output ./ --loop 100 --batchsize 8

Takes ais_bench's flags and writes its layout: `<output>/<timestamp or --output_dirname>/<stem>_0.<fmt>` and
`<output>/<same name>_summary.json`. Without --input it runs pure inference on generated data. The backend
follows the model file unless named: .om -> ais (Ascend NPU); .onnx -> OpenVINO when installed, else ONNX
Runtime (on a GPU device: ONNX Runtime with onnxruntime-gpu); .pth/.pt/.safetensors -> torch.
"""

from __future__ import annotations

import argparse

from twins_pcpvt.backends import BACKENDS, COMPILE_MODES, PRECISIONS
from twins_pcpvt.common import run_main
from twins_pcpvt.runner import OUTPUT_FORMATS, infer_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ais = parser.add_argument_group("ais_bench's flags")
    ais.add_argument(
        "--model", required=True, metavar="PATH", help="model file: .onnx, .pth/.pt/.safetensors or .om"
    )
    ais.add_argument(
        "--input",
        metavar="DIR[,DIR|FILE...]",
        help="folders of .bin/.npy tensors and/or such files, comma-separated; omit for pure inference",
    )
    ais.add_argument(
        "--output", metavar="DIR", help="where to write outputs and the summary (omit: print only)"
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
        type=int,
        default=1,
        metavar="N",
        help="runs per batch with --input; number of batches in pure inference (default: 1)",
    )
    ais.add_argument(
        "--batchsize",
        type=int,
        metavar="N",
        help="images per batch (default: the model's static batch, else 1)",
    )
    ais.add_argument(
        "--device",
        metavar="DEV",
        help="cpu, cuda[:N], tensorrt[:N] (onnxruntime) or an NPU number (ais); default: cpu / NPU 0",
    )
    ais.add_argument(
        "--warmup_count", type=int, default=1, metavar="N", help="untimed runs before measuring (default: 1)"
    )
    more = parser.add_argument_group("backend choice")
    more.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="runtime (default: auto, from the model file and device)",
    )
    more.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="inference precision (default: fp32); the summary records what actually ran",
    )
    more.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help="torch: run torch.compile first (MODE default: 'default')",
    )
    more.add_argument(
        "--no-cuda-graph",
        dest="no_cuda_graph",
        action="store_true",
        help="torch on CUDA: run eagerly instead of replaying a captured CUDA graph",
    )
    more.add_argument("--no-progress", dest="no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: infer_command(args))


if __name__ == "__main__":
    raise SystemExit(main())
