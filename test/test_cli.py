"""One command-line style for every script: --help shows the whole docstring with its exit status and loads no
runtime, kebab-case flags take their snake_case spelling too, and a bad argument is one line with exit 2."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each Python entry point: its module, and the smallest argv its parser accepts.
PYTHON_SCRIPTS = {
    "twins_pcpvt_s_preprocess": ["--data_path", "images", "--prep_dataset", "prep"],
    "twins_pth2onnx": [],
    "twins_pcpvt_s_infer": ["--model", "twins_dynamic.onnx"],
    "twins_pcpvt_s_postprocess": ["--folder-davinci-target", "out", "--annotation-file-path", "labels.txt"],
    "twins_pcpvt_s_compare": ["result_a", "result_b"],
    "twins_pcpvt.agreement": ["--model", "twins_dynamic.onnx", "--input", "prep"],
    "twins_pcpvt.evaltable": [str(ROOT), "--batch-sizes", "1"],
    "twins_pcpvt.demo": ["demo_data"],
}
PTH2OM, EVAL = "test/pth2om.sh", "test/eval_acc_perf.sh"

# A valid value for each flag that has a snake_case alias (store_true flags take none). A flag missing here
# fails test_every_alias_parses_like_its_kebab_spelling: add it with a value unlike its default.
ALIAS_VALUES = {
    "--class-map": "classes.txt",
    "--batch-size": "8",
    "--batch-sizes": "1,4",
    "--min-cosine": "0.5",
    "--ray-address": "auto",
}

# Runs an entry point as `python3 script.py ARGS` / `python3 -m module ARGS` would, then reports its exit
# status and which runtimes were imported by then.
PROBE = """
import json, runpy, sys
target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
code = None
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
runtimes = ("torch", "timm", "onnx", "onnxruntime", "openvino", "ray")
loaded = sorted(name for name in runtimes if name in sys.modules)
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def probe(module: str, *argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    target = str(ROOT / f"{module}.py") if "." not in module else module
    result = subprocess.run(
        [sys.executable, "-c", PROBE, target, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    *stderr_lines, report = result.stderr.splitlines()
    stderr = "\n".join(stderr_lines)
    return subprocess.CompletedProcess(result.args, 0, result.stdout, stderr), json.loads(report)


def parser_of(module: str):
    return importlib.import_module(module).build_parser()


def states_exit_status(text: str) -> bool:
    """An `Exit status:` paragraph that gives the meaning of 0, 1 and 2, in that order."""
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n")]
    return any(re.match(r"Exit status: 0 .*, 1 .*, 2 ", paragraph) for paragraph in paragraphs)


@pytest.mark.parametrize("module", PYTHON_SCRIPTS)
def test_help_shows_the_whole_docstring_and_loads_no_runtime(module):
    result, report = probe(module, "--help")
    assert report["code"] == 0, result.stderr
    assert report["loaded"] == [], f"--help imported {report['loaded']}: move the import into the function"
    docstring = importlib.import_module(module).__doc__.strip()
    assert docstring in result.stdout  # examples and paragraphs as written, not re-wrapped
    assert states_exit_status(docstring)


@pytest.mark.parametrize("module", PYTHON_SCRIPTS)
def test_every_alias_parses_like_its_kebab_spelling(module):
    parser = parser_of(module)
    base = PYTHON_SCRIPTS[module]
    aliased = [action for action in parser._actions if getattr(action, "hidden_aliases", ())]
    for action in aliased:
        kebab = action.option_strings[0]
        value = [] if action.nargs == 0 else [ALIAS_VALUES[kebab]]
        expected = vars(parser.parse_args([*base, kebab, *value]))
        assert expected[action.dest] != action.default, kebab
        for alias in action.hidden_aliases:
            assert vars(parser.parse_args([*base, alias, *value])) == expected, alias
    option_lines = [line for line in parser.format_help().splitlines() if line.lstrip().startswith("-")]
    for alias in (alias for action in aliased for alias in action.hidden_aliases):
        assert not any(alias in line.split() or f"{alias}," in line for line in option_lines), alias


def test_one_meaning_per_flag_name():
    export = parser_of("twins_pth2onnx").parse_args(["--batch_size", "8"])
    table = parser_of("twins_pcpvt.evaltable").parse_args([str(ROOT), "--batch_size", "1,4,8"])
    assert export.batch_size == 8 and table.batch_sizes == [1, 4, 8]


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("twins_pcpvt_s_preprocess", ["--limit"], "argument --limit: expected one argument"),
        ("twins_pcpvt_s_preprocess", ["--class_map"], "argument --class-map/--class_map: expected one"),
        ("twins_pcpvt_s_preprocess", ["--workers", "0"], "argument --workers: must be a positive integer"),
        ("twins_pth2onnx", ["--batch-size"], "argument --batch-size/--batch_size: expected one argument"),
        ("twins_pth2onnx", ["--tolerance", "inf"], "must be a finite non-negative number, got inf"),
        ("twins_pcpvt_s_infer", ["--loop"], "argument --loop/-l: expected one argument"),
        ("twins_pcpvt_s_infer", ["--ray-address"], "expected one argument"),
        ("twins_pcpvt_s_compare", ["--atol", "nan"], "argument --atol: must be a number, got nan"),
        ("twins_pcpvt_s_postprocess", ["--json-file-name"], "expected one argument"),
        ("twins_pcpvt.agreement", ["--images", "0"], "must be a positive integer, got 0"),
        ("twins_pcpvt.evaltable", ["--batch-sizes", "1,,4"], "not a comma-separated list of positive"),
        ("twins_pcpvt.demo", ["--count", "-1"], "must be a positive integer, got -1"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(module, argv, message):
    result, report = probe(module, *PYTHON_SCRIPTS[module], *argv)
    assert report["code"] == 2
    assert result.stderr.count("\n") == 0 and message in result.stderr and "(see --help)" in result.stderr
    assert report["loaded"] == []


def run_wrapper(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("script", [PTH2OM, EVAL])
def test_wrapper_help_shows_examples_and_exit_status(script, tmp_path):
    result = run_wrapper(script, "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: bash {script}")
    assert "    bash " + script in result.stdout  # an example
    assert states_exit_status(result.stdout)
    flags = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  --")]
    assert flags and not any("_" in flag for flag in flags)


@pytest.mark.parametrize(
    "script, kebab, snake, value, message",
    [
        (PTH2OM, "--batch-sizes", "--batch_size", "1,x", "--batch-sizes: 'x' is not a positive integer"),
        (PTH2OM, "--batch-sizes", "--batch_sizes", "0", "--batch-sizes: '0' is not a positive integer"),
        (PTH2OM, "--soc-version", "--soc_version", "no/chip", "--soc-version: 'no/chip' is not"),
        (PTH2OM, "--output-dir", "--output_dir", "a_file", "a_file: --output-dir exists and is not"),
        (EVAL, "--batch-sizes", "--batch_size", "4,0", "bad --batch-sizes '4,0'"),
        (EVAL, "--output-dir", "--output_dir", "a_file", "--output-dir a_file: exists"),
        (EVAL, "--class-map", "--class_map", "nope.txt", "--class-map nope.txt: file not found"),
        (EVAL, "--ray-address", "--ray_address", "auto", "--ray-address needs --engine ray"),
    ],
)
def test_wrapper_kebab_and_snake_spellings_are_one_flag(script, kebab, snake, value, message, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    first = "--random-init" if script == PTH2OM else "--demo"
    results = [run_wrapper(script, first, flag, value, cwd=tmp_path) for flag in (kebab, snake)]
    for result in results:
        assert result.returncode in (1, 2) and message in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert results[0].returncode == results[1].returncode and results[0].stderr == results[1].stderr
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.parametrize("script", [PTH2OM, EVAL])
def test_wrapper_flag_missing_its_value_is_exit_2(script, tmp_path):
    result = run_wrapper(script, "--random-init", "--batch-sizes", cwd=tmp_path)
    assert result.returncode == 2 and "--batch-sizes needs a value" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("module", PYTHON_SCRIPTS)
def test_help_documents_every_flag_in_text_that_wraps(module):
    """Every flag has a help line; the description's paragraphs fill their lines (no line broken off short
    inside a paragraph) and hold no run of spaces inside a line (a backslash at a line end of a docstring
    that is not raw joins two lines with the indentation between them)."""
    parser = parser_of(module)
    undocumented = [
        action.option_strings[0] if action.option_strings else action.dest
        for action in parser._actions
        if not action.help
    ]
    assert undocumented == [], undocumented
    text = parser.description
    examples = [line for line in text.splitlines() if line.startswith("    python3 ")]
    assert not any(re.search(r"\S {3,}-", line) for line in examples), examples
    for paragraph in text.split("\n\n"):
        lines = paragraph.splitlines()
        if any(line.startswith(" ") for line in lines):
            continue  # an example or a list, laid out by hand
        short = [line for line in lines[:-1] if len(line) < 60]
        assert short == [], (module, short)


# ---- one exit-status convention (docs/cli.md): a table of error kinds over every entry point -----------

USAGE_KINDS = ("unknown flag", "no arguments", "bad value", "output is an input")
FAILURE_KINDS = ("missing input", "malformed input", "unwritable output")
WRAPPERS = {"pth2om.sh": PTH2OM, "eval_acc_perf.sh": EVAL}
STEM = "ILSVRC2012_val_00000001"

# entry point -> {error kind: (argv, a fragment its error line must hold)}; a kind an entry point cannot meet
# (nothing it reads, or nothing it writes beside its inputs) is left out.
CONVENTION_TABLE = {
    "twins_pcpvt_s_preprocess": {
        "unknown flag": (["--data_path", "images", "--prep_dataset", "out", "--bogus"], "--bogus"),
        "no arguments": ([], "--data_path"),
        "bad value": (["--data_path", "images", "--prep_dataset", "out", "--workers", "0"], "--workers"),
        "missing input": (["--data_path", "nowhere", "--prep_dataset", "out"], "nowhere"),
        "malformed input": (["--data_path", "empty", "--prep_dataset", "out"], "empty"),
        "output is an input": (["--data_path", "images", "--prep_dataset", "images"], "images"),
        "unwritable output": (["--data_path", "images", "--prep_dataset", "afile"], "afile"),
    },
    "twins_pth2onnx": {
        "unknown flag": (["--bogus"], "--bogus"),
        "no arguments": ([], "--source"),
        "bad value": (["--source", "garbage.pth", "--tolerance", "inf"], "--tolerance"),
        "missing input": (["--source", "nowhere.pth", "--target", "out.onnx"], "nowhere.pth"),
        "malformed input": (["--source", "garbage.pth", "--target", "out.onnx"], "garbage.pth"),
        "output is an input": (["--source", "garbage.pth", "--target", "garbage.pth"], "garbage.pth"),
        "unwritable output": (["--source", "garbage.pth", "--target", "afile/out.onnx"], "afile"),
    },
    "twins_pcpvt_s_infer": {
        "unknown flag": (["--model", "garbage.onnx", "--bogus"], "--bogus"),
        "no arguments": ([], "--model"),
        "bad value": (["--model", "garbage.onnx", "--loop", "0"], "--loop"),
        "missing input": (["--model", "nowhere.onnx", "--input", "prep"], "nowhere.onnx"),
        "malformed input": (["--model", "garbage.onnx", "--input", "prep"], "garbage.onnx"),
        "output is an input": (["--model", "garbage.onnx", "--input", "prep", "--output", "prep"], "prep"),
        "unwritable output": (["--model", "garbage.onnx", "--input", "prep", "--output", "afile"], "afile"),
    },
    "twins_pcpvt_s_postprocess": {
        "unknown flag": (
            ["--folder-davinci-target", "result", "--annotation-file-path", "labels.txt", "--bogus"],
            "--bogus",
        ),
        "no arguments": ([], "--folder-davinci-target"),
        "bad value": (
            [
                "--folder-davinci-target",
                "result",
                "--annotation-file-path",
                "labels.txt",
                "--json-file-name",
                "a/b",
            ],
            "--json-file-name",
        ),
        "missing input": (
            ["--folder-davinci-target", "nowhere", "--annotation-file-path", "labels.txt"],
            "nowhere",
        ),
        "malformed input": (
            ["--folder-davinci-target", "result", "--annotation-file-path", "bad_labels.txt"],
            "bad_labels.txt",
        ),
        "output is an input": (
            [
                "--folder-davinci-target",
                "result",
                "--annotation-file-path",
                "labels.txt",
                "--json-file-name",
                "labels.txt",
            ],
            "labels.txt",
        ),
        "unwritable output": (
            [
                "--folder-davinci-target",
                "result",
                "--annotation-file-path",
                "labels.txt",
                "--result-json-path",
                "afile",
            ],
            "afile",
        ),
    },
    "twins_pcpvt_s_compare": {
        "unknown flag": (["result", "result", "--bogus"], "--bogus"),
        "no arguments": ([], "RESULT_A"),
        "bad value": (["result", "result", "--atol", "-1"], "--atol"),
        "missing input": (["result", "nowhere"], "nowhere"),
        "malformed input": (["result", "badresult"], "badresult"),
        "output is an input": (
            ["result", "result", "--json", "result/infer_summary.json"],
            "infer_summary.json",
        ),
        "unwritable output": (["result", "result", "--json", "afile/c.json"], "afile"),
    },
    "twins_pcpvt.agreement": {
        "unknown flag": (["--model", "garbage.onnx", "--input", "prep", "--bogus"], "--bogus"),
        "no arguments": ([], "--model"),
        "bad value": (["--model", "garbage.onnx", "--input", "prep", "--images", "0"], "--images"),
        "missing input": (["--model", "garbage.onnx", "--input", "nowhere"], "nowhere"),
        "malformed input": (["--model", "garbage.onnx", "--input", "empty"], "empty"),
        "output is an input": (
            ["--model", "garbage.onnx", "--input", "prep", "--json", "garbage.onnx"],
            "garbage",
        ),
        "unwritable output": (
            ["--model", "garbage.onnx", "--input", "prep", "--json", "afile/a.json"],
            "afile",
        ),
    },
    "twins_pcpvt.evaltable": {
        "unknown flag": (["evaluated", "--batch-sizes", "1", "--bogus"], "--bogus"),
        "no arguments": ([], "--batch-sizes"),
        "bad value": (["evaluated", "--batch-sizes", "0"], "--batch-sizes"),
        "missing input": (["nowhere", "--batch-sizes", "1"], "nowhere"),
        "malformed input": (["evaluated", "--batch-sizes", "2"], "result.json"),
        "unwritable output": (["evaluated", "--batch-sizes", "1"], "eval_summary.md"),
    },
    "twins_pcpvt.demo": {
        "unknown flag": (["demo", "--bogus"], "--bogus"),
        "no arguments": ([], "root"),
        "bad value": (["demo", "--count", "0"], "--count"),
        "unwritable output": (["afile"], "afile"),
    },
    "eval_acc_perf.sh": {
        "unknown flag": (["--bogus"], "--bogus"),
        "no arguments": ([], "--datasets-path"),
        "bad value": (["--demo", "--loop", "0"], "--loop"),
        "missing input": (["--datasets-path", "nowhere", "--random-init"], "nowhere"),
        "malformed input": (
            ["--datasets-path", "images", "--label-file", "bad_labels.txt", "--random-init"],
            "bad_labels",
        ),
        "unwritable output": (
            [
                "--datasets-path",
                "images",
                "--label-file",
                "labels.txt",
                "--random-init",
                "--output-dir",
                "afile",
            ],
            "afile",
        ),
    },
    "pth2om.sh": {
        "unknown flag": (["--bogus"], "--bogus"),
        "no arguments": ([], "--source"),
        "bad value": (["--random-init", "--batch-sizes", "0"], "--batch-sizes"),
        "missing input": (["--onnx", "nowhere.onnx"], "nowhere.onnx"),
        "malformed input": (["--source", "garbage.pth", "--onnx-only"], "garbage.pth"),
        "unwritable output": (["--random-init", "--onnx-only", "--output-dir", "afile"], "afile"),
    },
}


def convention_status(entry: str, kind: str) -> int:
    """What docs/cli.md says an entry point exits with for this kind of error."""
    if entry == "twins_pcpvt_s_compare":
        return 2  # as diff(1): 1 means "the outputs differ"; every trouble is 2
    return 2 if kind in USAGE_KINDS else 1


def make_world(folder: Path) -> None:
    """The inputs the table's command lines name, each either good or broken in one way."""
    from PIL import Image

    (folder / "images").mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "images" / f"{STEM}.JPEG")
    (folder / "empty").mkdir()
    (folder / "empty" / "readme.txt").write_text("no images, no tensors")
    (folder / "prep").mkdir()
    (folder / "prep" / f"{STEM}.bin").write_bytes(bytes(3 * 224 * 224 * 4))
    for name, size in (("result", 4000), ("badresult", 3000)):
        (folder / name / "infer").mkdir(parents=True)
        (folder / name / "infer" / f"{STEM}_0.bin").write_bytes(bytes(size))
        summary = {"args": ["twins_pcpvt_s_infer.py", "--model", "m.onnx"], "precision": "fp32"}
        (folder / name / "infer_summary.json").write_text(json.dumps(summary))
    (folder / "labels.txt").write_text(f"{STEM}.JPEG 1\n")
    (folder / "bad_labels.txt").write_text(f"{STEM}.JPEG one\n")
    (folder / "garbage.pth").write_bytes(bytes(range(256)) * 4)
    (folder / "garbage.onnx").write_bytes(bytes(range(256)) * 4)
    (folder / "afile").write_text("a file where a folder or a new file is expected")
    (folder / "evaluated" / "bs1").mkdir(parents=True)  # one batch size whole, one with a broken result.json
    (folder / "evaluated" / "bs1" / "result.json").write_text('{"top1": 1.0, "top5": 1.0, "images": 1}')
    (folder / "evaluated" / "bs1" / "perf_summary.json").write_text('{"throughput": 1.0}')
    (folder / "evaluated" / "bs2").mkdir()
    (folder / "evaluated" / "bs2" / "result.json").write_text("{not json")
    (folder / "evaluated" / "eval_summary.md").mkdir()  # where the table would go: taken by a folder


def tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(path.relative_to(folder)), path.stat().st_size) for path in folder.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry, kind", [(entry, kind) for entry, kinds in CONVENTION_TABLE.items() for kind in kinds]
)
def test_one_exit_status_convention(entry, kind, tmp_path):
    """Each kind of error gets the status docs/cli.md gives it, from every entry point: 2 for usage, 1 for a
    failure (compare: 2 for both, as diff), in error lines naming what is wrong, with no traceback, and
    nothing written."""
    make_world(tmp_path)
    if kind == "unwritable output" and entry == "twins_pcpvt.evaltable":
        (tmp_path / "evaluated" / "bs2").rename(tmp_path / "bs2_aside")
    if kind == "malformed input" and entry == "twins_pcpvt.evaltable":  # output paths are checked first
        (tmp_path / "evaluated" / "eval_summary.md").rename(tmp_path / "eval_summary_aside")
    before = tree(tmp_path)
    argv, fragment = CONVENTION_TABLE[entry][kind]
    if entry in WRAPPERS:
        command = ["bash", str(ROOT / WRAPPERS[entry]), *argv]
    elif "." in entry:
        command = [sys.executable, "-m", entry, *argv]
    else:
        command = [sys.executable, str(ROOT / f"{entry}.py"), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == convention_status(entry, kind), (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") or ": error: " in line for line in lines), result.stderr
    # a wrapper whose stage failed adds one line naming the stage after the stage's own
    assert len(lines) == (
        2 if entry in WRAPPERS and kind == "malformed input" and "export" in lines[-1] else 1
    )
    assert fragment in lines[0], (fragment, lines[0])
    assert tree(tmp_path) == before
