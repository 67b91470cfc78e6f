#!/usr/bin/env bash
# The whole flow per batch size: preprocess once, export once (or take the OM files of test/pth2om.sh on an NPU),
# then for each batch size folder inference, postprocess (result.json) and a pure-performance run; one table at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

usage() {
    cat <<'EOF'
usage: bash test/eval_acc_perf.sh --datasets-path DIR [options]
       bash test/eval_acc_perf.sh --demo [options]

    bash test/eval_acc_perf.sh --datasets-path /data/imagenet/val --label-file val_label.txt \
        --source pcpvt_small.pth --batch-sizes 1,8 --output-dir ./eval_output
    bash test/eval_acc_perf.sh --backend ais --datasets-path /data/imagenet/val --om-dir ./om

  --datasets-path DIR   ImageNet val images (flat, val/, or class folders)
  --label-file F        val_label.txt ("<image name> <class>"); default: the labels of the class folders,
                        else a val_label.txt in or beside the --datasets-path folder
  --class-map F         class folder names, one per line (default: the 1000 ILSVRC-2012 WordNet ids)
  --batch-sizes LIST    comma-separated batch sizes (default 1,4,8,16,32)
  --source CKPT         weights: a .pth/.safetensors checkpoint, or timm[:tag]
  --random-init         seeded random weights (accuracy is then meaningless)
  --backend B           auto|onnxruntime|openvino|torch|ais (default auto; ais runs ais_bench on the OM files)
  --device D            cpu, cuda[:N], or the NPU id for ais (default cpu, NPU 0)
  --precision P         auto|fp32|fp16|bf16 (default auto: the hardware's native reduced precision, fp32
                        where there is none; not used by ais); a reduced precision is also compared with fp32
  --om-dir DIR          where test/pth2om.sh wrote twins_bs<N>.om (backend ais; default the output dir)
  --limit N             only the first N images (a rerun scores exactly these)
  --loop N              runs of the pure-performance measurement (default 100)
  --output-dir DIR      where everything goes (default ./eval_output); one run at a time: a second run
                        into it stops at once, naming the process that holds it
  --engine E            local|ray: how the folder inference runs (default local; ray: a Ray Data job with one
                        model actor per --device entry, see docs/ray.md)
  --ray-address A       with --engine ray: the Ray cluster to join (default: a local one for each run)
  --demo                the embedded default: 12 generated images, random-init weights unless --source,
                        batch sizes 1,4, 20 loops, output in ./out/demo
  -h, --help            this text

Every flag also takes the form --flag=value, and its underscore spelling (--output_dir); --batch_size is
--batch-sizes. Every check runs before the first stage: the arguments, the files they name, the labels, the
backend's runtime, device and precision, timm's weights for --source timm.

Exit status: 0 when every stage ran for every batch size and the summary was written, 1 when a check or a
stage failed (its error line names the file and the reason; a failed stage is named, with how to go on), 2 on
bad usage.
EOF
}

arguments=("$@")
die() { echo "eval_acc_perf.sh: error: $*" >&2; exit 1; }
# stage NAME COMMAND...: run one stage; when it fails, name it and say how to go on (its own error is above).
stage() {
    local name="$1"
    shift
    "$@" && return 0
    local status=$?
    [ "$status" -lt 128 ] || exit "$status"  # interrupted by a signal: its own exit status
    die "the $name stage failed (exit $status, its error is above): fix what it names and run the same command" \
        "again; the preprocess keeps the tensors it already made, the later stages run again"
}
usage_error() { echo "eval_acc_perf.sh: error: $* (see --help)" >&2; exit 2; }
need_value() {
    [ $# -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
    case "$2" in --*) usage_error "$1 needs a value, got the flag '$2' (a name starting with -- is written ./$2)" ;; esac
}
positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || usage_error "$1 must be a positive integer, got '$2'"; }

datasets_path=""
label_file=""
class_map=""
batch_sizes="1,4,8,16,32"
source=""
random_init=0
backend="auto"
device=""
precision="auto"
om_dir=""
limit=""
loop=100
output_dir=""
engine="local"
ray_address=""
demo=0
while [ $# -gt 0 ]; do
    case "$1" in
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --flag=value is --flag value
    esac
    case "$1" in
        --datasets-path | --datasets_path) need_value "$@"; datasets_path="$2"; shift 2 ;;
        --label-file | --label_file) need_value "$@"; label_file="$2"; shift 2 ;;
        --class-map | --class_map) need_value "$@"; class_map="$2"; shift 2 ;;
        --batch-sizes | --batch_sizes | --batch_size) need_value "$@"; batch_sizes="$2"; shift 2 ;;
        --source) need_value "$@"; source="$2"; shift 2 ;;
        --random-init | --random_init) random_init=1; shift ;;
        --backend) need_value "$@"; backend="$2"; shift 2 ;;
        --device) need_value "$@"; device="$2"; shift 2 ;;
        --precision) need_value "$@"; precision="$2"; shift 2 ;;
        --om-dir | --om_dir) need_value "$@"; om_dir="$2"; shift 2 ;;
        --limit) need_value "$@"; limit="$2"; shift 2 ;;
        --loop) need_value "$@"; loop="$2"; shift 2 ;;
        --output-dir | --output_dir) need_value "$@"; output_dir="$2"; shift 2 ;;
        --engine) need_value "$@"; engine="$2"; shift 2 ;;
        --ray-address | --ray_address) need_value "$@"; ray_address="$2"; shift 2 ;;
        --demo) demo=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

# A relative path starting with a dash would read as an option to the tools it is passed to: ./ goes in front.
[[ "$datasets_path" != -* ]] || datasets_path="./$datasets_path"
[[ "$label_file" != -* ]] || label_file="./$label_file"
[[ "$class_map" != -* ]] || class_map="./$class_map"
[[ "$source" != -* ]] || source="./$source"
[[ "$om_dir" != -* ]] || om_dir="./$om_dir"
[[ "$output_dir" != -* ]] || output_dir="./$output_dir"
# The runner and ais_bench read --input as a comma-separated list: the tensors under the output folder could
# not be named.
[[ "$output_dir" != *,* ]] || usage_error "--output-dir '$output_dir' holds a comma, but the inference reads its --input (the tensors under it) as a comma-separated list: choose a name without one"

generate_demo_data=0
if [ "$demo" = 1 ]; then
    output_dir="${output_dir:-./out/demo}"
    if [ -z "$datasets_path" ]; then
        generate_demo_data=1
        datasets_path="$output_dir/demo_data/val"
        label_file="$output_dir/demo_data/val_label.txt"
    fi
    [ "$batch_sizes" != "1,4,8,16,32" ] || batch_sizes="1,4"
    [ "$loop" != 100 ] || loop=20
    [ -n "$source" ] || random_init=1
fi
output_dir="${output_dir:-./eval_output}"

# Every argument is checked here, before anything is written or run.
[ -n "$datasets_path" ] || usage_error "--datasets-path is required (or --demo)"
[[ "$batch_sizes" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || usage_error "bad --batch-sizes '$batch_sizes' (expected e.g. 1,4,8)"
[ -z "$limit" ] || positive_int --limit "$limit"
positive_int --loop "$loop"
case "$backend" in auto|onnxruntime|openvino|torch|ais) ;; *) usage_error "unknown --backend '$backend' (auto|onnxruntime|openvino|torch|ais)" ;; esac
case "$precision" in auto|fp32|fp16|bf16) ;; *) usage_error "unknown --precision '$precision' (auto|fp32|fp16|bf16)" ;; esac
device_item='(cpu|(cuda|tensorrt)(:[0-9]+)?|[0-9]+)'
[ -z "$device" ] || [[ "$device" =~ ^$device_item(,$device_item)*$ ]] \
    || usage_error "bad --device '$device' (cpu, cuda[:N], tensorrt[:N] or NPU ids such as 0,1)"
case "$engine" in local|ray) ;; *) usage_error "unknown --engine '$engine' (local|ray)" ;; esac
[ "$engine" = local ] || [ "$backend" != ais ] || usage_error "--engine ray runs this toolkit's runner, not ais_bench (--backend ais)"
[ -z "$ray_address" ] || [ "$engine" = ray ] || usage_error "--ray-address needs --engine ray"
if [ -z "$source" ] && [ "$random_init" = 0 ] && [ "$backend" != "ais" ]; then
    echo "eval_acc_perf.sh: give --source CKPT (or --random-init for a smoke run)" >&2
    exit 2
fi
if [ -n "$source" ] && [ "$random_init" = 0 ] && [ "$source" != timm ] && [[ "$source" != timm:* ]]; then
    [ -f "$source" ] || die "--source $source: checkpoint file not found"
    [ -r "$source" ] || die "--source $source: not readable"
fi
if [ "$generate_demo_data" = 0 ]; then
    [ -d "$datasets_path" ] || die "--datasets-path $datasets_path: not a folder"
    [ -z "$label_file" ] || [ -f "$label_file" ] || die "label file not found: $label_file"
fi
[ -z "$class_map" ] || [ -f "$class_map" ] || die "--class-map $class_map: file not found"
if [ "$backend" = "torch" ] && { [ "$random_init" = 1 ] || [ ! -f "$source" ]; }; then
    echo "eval_acc_perf.sh: --backend torch needs --source pointing at a checkpoint file" >&2
    exit 2
fi
[ ! -e "$output_dir" ] || [ -d "$output_dir" ] || die "--output-dir $output_dir: exists and is not a folder"

IFS=',' read -r -a batch_list <<< "$batch_sizes"
if [ "$backend" = "ais" ]; then
    om_dir="${om_dir:-$output_dir}"
    for bs in "${batch_list[@]}"; do
        [ -f "$om_dir/twins_bs${bs}.om" ] || die "$om_dir/twins_bs${bs}.om not found: run test/pth2om.sh --batch-sizes $batch_sizes --output-dir $om_dir first"
    done
    check_model="$om_dir/twins_bs${batch_list[0]}.om"
elif [ "$backend" = "torch" ]; then
    check_model="$source"
else
    check_model="twins_dynamic.onnx"
fi

# What only the toolkit can tell, still before the first stage: where the labels are (the class folders the
# images lie in, --label-file, or a val_label.txt in or beside the data folder) and that they read, whether the
# backend's runtime, device and precision can run, and whether timm's weights are at hand for --source timm.
# Prints the label file to use (nothing: the class folders' labels, through the preprocess manifest).
found_labels="$("$PY" - "$([ "$generate_demo_data" = 1 ] || echo "$datasets_path")" "$label_file" "$class_map" \
    "$backend" "$check_model" "${device%%,*}" "$([ "$backend" = ais ] && echo auto || echo "$precision")" \
    "$([ "$random_init" = 1 ] || echo "$source")" <<'PYTHON'
import os
import sys

from twins_pcpvt.common import ToolkitError, run_main


def check() -> int:
    data, label_file, class_map, backend, model, device, precision, source = sys.argv[1:]
    try:
        from twins_pcpvt.backends import check_runner
        from twins_pcpvt.data import discover_images
        from twins_pcpvt.labels import read_labels
    except ImportError as exc:
        raise ToolkitError(
            f"{sys.executable} lacks what the toolkit needs ({exc}): install requirements.txt into it, or name "
            "another interpreter with PYTHON=..."
        ) from None
    if data:
        rows = discover_images(data, class_map=class_map or None, notice=lambda message: None)
        if not label_file and rows[0].label is None:
            beside = [os.path.join(data, "val_label.txt"), os.path.join(os.path.dirname(data.rstrip("/")), "val_label.txt")]
            label_file = next((path for path in beside if os.path.isfile(path)), "")
            if not label_file:
                raise ToolkitError(
                    f"{data}: images without class folders, and no val_label.txt in or beside the folder: "
                    "pass --label-file FILE (lines of '<image file name> <class>', e.g. val_label.txt)"
                )
        if label_file:
            read_labels(label_file)
        print(label_file)
    check_runner(backend, model, device=device or None, precision=precision)
    if source in ("timm", "timm:in1k"):
        from twins_pcpvt.hub import TIMM_TAG, timm_weights

        timm_weights(TIMM_TAG)
    return 0


sys.exit(run_main(check))
PYTHON
)" || exit $?
if [ "$generate_demo_data" = 1 ] || [ -n "$label_file" ]; then
    labels_text="$label_file (--label-file)"
elif [ -z "$found_labels" ]; then
    labels_text="the class folders of $datasets_path (through prep_dataset/manifest.tsv)"
else
    label_file="$found_labels"
    where="$([ "$label_file" = "$datasets_path/val_label.txt" ] && echo in || echo beside)"
    labels_text="$label_file (found $where the --datasets-path folder)"
fi

mkdir -p "$output_dir" || die "--output-dir $output_dir: cannot create the folder"
# One run per output folder: the script runs again (same pid) under the folder's lock, which it and every stage
# it starts hold until the last of them ends; a second run into the folder stops here in one line.
if [ "${TWINS_PCPVT_HOLDS:-}" != "$(cd -- "$output_dir" && pwd -P)" ]; then
    exec "$PY" -m twins_pcpvt.hold "$output_dir" bash "${BASH_SOURCE[0]}" ${arguments[@]+"${arguments[@]}"}
fi
prep_dir="$output_dir/prep_dataset"

if [ "$backend" = "ais" ]; then
    banner="weights: the OM models in $om_dir (twins_bs<N>.om for batch sizes $batch_sizes, compiled by test/pth2om.sh)"
elif [ "$random_init" = 1 ]; then
    banner="WARNING: random-init weights: the accuracy below is meaningless. For real numbers use --source pcpvt_small.pth on ImageNet val (expect 81.22% top-1)."
else
    banner="weights: $source"
fi
echo "$banner"
echo "labels: $labels_text"

if [ "$generate_demo_data" = 1 ]; then
    echo "== generating the demo data set in $output_dir/demo_data"
    demo_args=()
    if [ "$random_init" = 1 ]; then
        # The random weights as a checkpoint file: PyTorch then runs the very weights the ONNX file holds.
        demo_args=(--weights "$output_dir/random_init.pth")
        source="$output_dir/random_init.pth"
        random_init=0
    fi
    stage "demo data" "$PY" -m twins_pcpvt.demo "$output_dir/demo_data" ${demo_args[@]+"${demo_args[@]}"}
fi

echo "== preprocess: $datasets_path -> $prep_dir"
prep_args=(--data_path "$datasets_path" --prep_dataset "$prep_dir")
[ -z "$limit" ] || prep_args+=(--limit "$limit")
[ -z "$class_map" ] || prep_args+=(--class-map "$class_map")
stage preprocess "$PY" "$ROOT/twins_pcpvt_s_preprocess.py" "${prep_args[@]}"

# Labels: the label file when given, else the manifest of class folders written by the preprocess.
annotation="${label_file:-$prep_dir/manifest.tsv}"

if [ "$backend" = "ais" ]; then
    infer=("$PY" -m ais_bench)
    device_args=(--device "${device:-0}")
else
    onnx_path="$output_dir/twins_dynamic.onnx"
    echo "== export: ${source:-random-init} -> $onnx_path"
    export_args=(--target "$onnx_path")
    if [ "$random_init" = 1 ]; then export_args+=(--random-init); else export_args+=(--source "$source"); fi
    stage export "$PY" "$ROOT/twins_pth2onnx.py" "${export_args[@]}"
    infer=("$PY" "$ROOT/twins_pcpvt_s_infer.py" --backend "$backend" --precision "$precision")
    device_args=(--device "${device:-cpu}")
fi
engine_args=()
[ "$engine" = local ] || engine_args=(--engine ray)
[ -z "$ray_address" ] || engine_args+=(--ray-address "$ray_address")

for bs in "${batch_list[@]}"; do
    bs_dir="$output_dir/bs${bs}"
    # This script's own results of an earlier run: ais_bench adds to an existing folder instead of replacing it,
    # so stale outputs would be scored with the new ones.
    rm -rf -- "$bs_dir/result" "$bs_dir/result.json" "$bs_dir/perf" "$bs_dir/perf_summary.json"
    mkdir -p "$bs_dir"
    if [ "$backend" = "ais" ]; then
        model="$om_dir/twins_bs${bs}.om"
    elif [ "$backend" = "torch" ]; then
        model="$source"
    else
        model="$onnx_path"
    fi
    echo "== batch size $bs: folder inference ($model)"
    stage "batch size $bs folder inference" "${infer[@]}" --model "$model" --input "$prep_dir" \
        --output "$bs_dir/result" --output_dirname infer \
        --outfmt BIN --batchsize "$bs" "${device_args[@]}" ${engine_args[@]+"${engine_args[@]}"}
    echo "== batch size $bs: postprocess"
    stage "batch size $bs postprocess" "$PY" "$ROOT/twins_pcpvt_s_postprocess.py" --folder-davinci-target "$bs_dir/result" \
        --annotation-file-path "$annotation" --result-json-path "$bs_dir" --json-file-name result.json
    echo "== batch size $bs: pure-performance run ($loop loops)"
    stage "batch size $bs pure-performance" "${infer[@]}" --model "$model" --output "$bs_dir" --output_dirname perf --outfmt BIN \
        --loop "$loop" --batchsize "$bs" "${device_args[@]}"
done

if [ "$backend" != "ais" ]; then
    echo "== precision: the precision that ran against fp32, same model and inputs"
    stage "precision check" "$PY" -m twins_pcpvt.agreement --model "$model" --input "$prep_dir" --backend "$backend" \
        --precision "$precision" "${device_args[@]}" --json "$output_dir/precision_agreement.json"
fi

if [ "$demo" = 1 ] && [ "$backend" != "ais" ] && [ -f "$source" ]; then
    echo "== runtimes: the same weights on ONNX Runtime, OpenVINO and PyTorch, fp32, same images"
    stage "runtimes check" "$PY" -m twins_pcpvt.agreement --model "$onnx_path" --checkpoint "$source" --input "$prep_dir" \
        --runtimes onnxruntime,openvino,torch "${device_args[@]}" --json "$output_dir/runtime_agreement.json"
fi

echo "== summary"
stage summary "$PY" -m twins_pcpvt.evaltable "$output_dir" --batch-sizes "$batch_sizes" --note "$banner"
