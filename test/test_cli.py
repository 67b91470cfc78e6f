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
