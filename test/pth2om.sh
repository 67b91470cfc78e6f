#!/usr/bin/env bash
# Checkpoint -> ONNX (once, checked against PyTorch) -> one Ascend OM per batch size with ATC.
#
#   bash test/pth2om.sh --source pcpvt_small.pth --batch-sizes 1,4,8,16,32 [--soc-version Ascend310P3]
#                       [--output-dir DIR] [--onnx-only] [--random-init]
#
# Writes DIR/twins_dynamic.onnx and DIR/twins_bs${bs}.om for each batch size (DIR defaults to the current folder).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$script_dir")"
python_bin="${PYTHON:-python3}"
precision_file="$repo_dir/op_precision.ini"

usage() {
    cat <<EOF
usage: bash test/pth2om.sh --source CKPT [options]

Export CKPT to DIR/twins_dynamic.onnx (dynamic batch, checked against PyTorch), then compile it with ATC into
DIR/twins_bs\${bs}.om for each batch size, with --op_precision_mode=$precision_file.

    bash test/pth2om.sh --source pcpvt_small.pth --batch-sizes 1,4,8,16,32 --output-dir ./om
    bash test/pth2om.sh --random-init --onnx-only --output-dir ./out     # no CANN needed

options:
  --source CKPT          checkpoint (.pth/.safetensors) or 'timm'; not needed with --random-init or --onnx
  --batch-sizes LIST     comma-separated batch sizes (default 1,4,8,16,32)
  --soc-version CHIP     ATC target, e.g. Ascend310P3 (default: read from 'npu-smi info')
  --output-dir DIR       where the ONNX and OM files go (default: the current folder; created if missing)
  --onnx FILE            skip the export and compile this existing ONNX file
  --onnx-only            stop after the ONNX file (no CANN needed)
  --random-init          export seeded random weights instead of a checkpoint (demos and tests)
  --allow-unsafe-pickle  pass through to twins_pth2onnx.py: load a trusted pickle that holds more than weights
  -h, --help             show this help

Every flag also takes the form --flag=value, and its underscore spelling (--output_dir); --batch_size is
--batch-sizes. Every check runs before the export: the arguments, the files they name, and unless --onnx-only
atc on PATH and the chip (--soc-version, else 'npu-smi info').

The CANN environment is taken from \$ASCEND_TOOLKIT_HOME/set_env.sh or /usr/local/Ascend/ascend-toolkit/set_env.sh
when present. The python interpreter is \$PYTHON (default python3).

Exit status: 0 when the ONNX file (and, unless --onnx-only, every OM file) was written, 1 when a step failed
(the export, ATC, a missing tool or file), 2 on bad usage.
EOF
}

die() {
    echo "error: $1" >&2
    exit "${2:-1}"
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)" 2
    [[ "$2" != --* ]] || die "$1 needs a value, got the flag '$2' (a name starting with -- is written ./$2)" 2
}

source_ckpt=""
batch_sizes="1,4,8,16,32"
soc_version=""
output_dir="."
existing_onnx=""
onnx_only=0
random_init=0
export_flags=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --flag=value is --flag value
    esac
    case "$1" in
        --source) need_value "$@"; source_ckpt="$2"; shift 2 ;;
        --batch-sizes | --batch_sizes | --batch_size) need_value "$@"; batch_sizes="$2"; shift 2 ;;
        --soc-version | --soc_version) need_value "$@"; soc_version="$2"; shift 2 ;;
        --output-dir | --output_dir) need_value "$@"; output_dir="$2"; shift 2 ;;
        --onnx) need_value "$@"; existing_onnx="$2"; shift 2 ;;
        --onnx-only | --onnx_only) onnx_only=1; shift ;;
        --random-init | --random_init) random_init=1; export_flags+=(--random-init); shift ;;
        --allow-unsafe-pickle | --allow_unsafe_pickle) export_flags+=(--allow-unsafe-pickle); shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" 2 ;;
    esac
done

# A relative path starting with a dash would read as an option to the tools it is passed to: ./ goes in front.
[[ "$source_ckpt" != -* ]] || source_ckpt="./$source_ckpt"
[[ "$output_dir" != -* ]] || output_dir="./$output_dir"
[[ "$existing_onnx" != -* ]] || existing_onnx="./$existing_onnx"

IFS=',' read -r -a batch_list <<<"$batch_sizes"
[[ ${#batch_list[@]} -gt 0 ]] || die "--batch-sizes needs at least one batch size" 2
for bs in "${batch_list[@]}"; do
    [[ "$bs" =~ ^[1-9][0-9]*$ ]] || die "--batch-sizes: '$bs' is not a positive integer (expected e.g. 1,4,8,16,32)" 2
done
if [[ -n "$existing_onnx" ]]; then
    [[ -f "$existing_onnx" ]] || die "$existing_onnx: ONNX file not found"
    [[ $onnx_only -eq 0 ]] || die "--onnx and --onnx-only together leave nothing to do" 2
elif [[ -z "$source_ckpt" && $random_init -eq 0 ]]; then
    die "--source is required (a checkpoint, or 'timm'), unless --random-init or --onnx is given" 2
elif [[ $random_init -eq 0 && "$source_ckpt" != timm && "$source_ckpt" != timm:* ]]; then
    [[ -f "$source_ckpt" ]] || die "--source $source_ckpt: checkpoint file not found"
fi

[[ -z "$soc_version" || "$soc_version" =~ ^[A-Za-z0-9_]+$ ]] || die "--soc-version: '$soc_version' is not a chip name (e.g. Ascend310P3)" 2
[[ ! -e "$output_dir" || -d "$output_dir" ]] || die "$output_dir: --output-dir exists and is not a folder"
mkdir -p "$output_dir" || die "$output_dir: cannot create the output folder"
output_dir="$(cd "$output_dir" && pwd)"

if [[ -n "$existing_onnx" ]]; then
    onnx_file="$(cd "$(dirname "$existing_onnx")" && pwd)/$(basename "$existing_onnx")"
else
    onnx_file="$output_dir/twins_dynamic.onnx"
fi

# CANN's set_env.sh, when there ($1 = quiet: without saying so).
load_cann_env() {
    local env_script
    for env_script in "${ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/set_env.sh}" /usr/local/Ascend/ascend-toolkit/set_env.sh; do
        if [[ -n "$env_script" && -f "$env_script" ]]; then
            [[ "${1:-}" == quiet ]] || echo "sourcing $env_script"
            set +eu  # the toolkit's script reads unset variables and runs commands that may fail harmlessly
            # shellcheck disable=SC1090
            source "$env_script"
            set -eu
            return 0
        fi
    done
}

# ATC on PATH and the chip name (printed), from --soc-version or from `npu-smi info`.
check_atc_and_chip() {
    command -v atc >/dev/null 2>&1 || die "atc (CANN's model compiler) not found on PATH, even after looking for \
the toolkit's set_env.sh, so $onnx_file cannot be compiled: install CANN (or set ASCEND_TOOLKIT_HOME), or pass \
--onnx-only to stop after the ONNX file"
    if [[ -n "$soc_version" ]]; then
        echo "$soc_version"
        return 0
    fi
    command -v npu-smi >/dev/null 2>&1 \
        || die "npu-smi not found, so the chip is unknown; pass --soc-version (e.g. Ascend310P3)"
    local npu_info chip_name
    npu_info="$(npu-smi info)" || die "'npu-smi info' failed; pass --soc-version (e.g. Ascend310P3)"
    # The first device row reads "| 0       310P3     | OK  | ...": the second field is the chip name.
    chip_name="$(awk -F'|' '$2 ~ /^[[:space:]]*[0-9]+[[:space:]]+[[:alnum:]]+[[:space:]]*$/ {
        split($2, fields, " "); print fields[2]; exit }' <<<"$npu_info")"
    [[ -n "$chip_name" ]] || die "could not read the chip name from 'npu-smi info'; pass --soc-version (e.g. Ascend310P3)"
    case "$chip_name" in
        Ascend*) echo "$chip_name" ;;
        *) echo "Ascend$chip_name" ;;
    esac
}

# Every check runs here, before the export. CANN's environment is loaded in a subshell for them, so the export
# runs in the environment the script was started in.
if [[ $onnx_only -eq 0 ]]; then
    [[ -f "$precision_file" ]] || die "$precision_file: operator precision file not found"
    chip="$(load_cann_env quiet >&2; check_atc_and_chip)" || exit $?
    [[ -n "$soc_version" ]] || echo "chip from npu-smi: $chip"
    soc_version="$chip"
fi

if [[ -n "$existing_onnx" ]]; then
    echo "using existing ONNX file $onnx_file"
else
    source_args=()
    [[ -z "$source_ckpt" ]] || source_args=(--source "$source_ckpt")
    "$python_bin" "$repo_dir/twins_pth2onnx.py" "${source_args[@]}" --target "$onnx_file" "${export_flags[@]}" \
        || die "export to $onnx_file failed (see above)"
fi

if [[ $onnx_only -eq 1 ]]; then
    echo "done (--onnx-only): $onnx_file"
    exit 0
fi

load_cann_env
for bs in "${batch_list[@]}"; do
    om_base="$output_dir/twins_bs${bs}"
    echo "atc: batch size $bs -> ${om_base}.om"
    started=$SECONDS
    # ATC leaves fusion_result.json and kernel_meta/ in its working folder: keep them in the output folder.
    (cd "$output_dir" && atc --framework=5 --model="$onnx_file" --output="$om_base" --input_format=NCHW \
        --input_shape="input:${bs},3,224,224" --soc_version="$soc_version" \
        --op_precision_mode="$precision_file" --log=error) \
        || die "atc failed for batch size $bs (see its messages above)"
    [[ -s "${om_base}.om" ]] || die "atc reported success but ${om_base}.om is missing or empty"
    echo "wrote ${om_base}.om ($(wc -c <"${om_base}.om") bytes) in $((SECONDS - started)) s"
done
echo "done: ${#batch_list[@]} OM file(s) in $output_dir for $soc_version"
