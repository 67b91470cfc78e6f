"""The bars two runs of the model must meet to count as agreeing: one row per precision, each with its reason.

Every check of the toolkit reads its bar here: the compare command (`twins_pcpvt_s_compare.py`, per
output), the agreement check (`python3 -m twins_pcpvt.agreement`, the worst image; the demo runs it), the
benchmarks and the device check (`bench/`). Two runs are held to the bar of the lower of their precisions.

Why these values: a rounding error of relative size r in the scores moves the cosine by about r^2 / 2, so the
cosine bars follow the precision's unit roundoff u (2^-24 fp32, 2^-11 fp16, 2^-8 bf16) grown over the model's
few hundred operations; absolute differences scale with the scores (a trained model's reach 15 to 20, the
random-init model's about 1.3). Measured on the random-init model (seed 0, photo crops and random tensors, the
torch backend on a 2-core AMD EPYC with AVX-512 BF16): fp16 against fp32 at worst cosine 0.999999 and largest
difference 3.1e-3, bf16 at 0.99984 and 2.6e-2, ONNX Runtime against PyTorch fp32 at 2.4e-7 (docs/stages.md,
section 5, has the table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    precision: str
    min_cosine: float  # lowest cosine allowed for one output (compare) or the worst image (agreement)
    atol: float  # largest absolute difference allowed within one output (compare)
    epsilon: float  # machine epsilon: a reference lead within TIE_FACTOR x epsilon x |logit| is a near-tie
    reason: str


# Highest precision first: a pair of runs is held to the bar of the one that comes later.
BARS = {
    bar.precision: bar
    for bar in (
        Bar(
            "fp32",
            min_cosine=0.99999,
            atol=1e-4,
            epsilon=2.0**-23,
            reason="another fp32 runtime: differences of 2.4e-7 measured (4e-6 at trained scores); an export "
            "mistake moves scores by far more than either bar",
        ),
        Bar(
            "fp16",
            min_cosine=0.9999,
            atol=5e-2,
            epsilon=2.0**-10,
            reason="fp16 (u = 2^-11): worst cosine 0.999999 and 3.1e-3 measured, about 0.05 at trained "
            "scores; the absolute bar sits at that (--atol gives more room)",
        ),
        Bar(
            "bf16",
            min_cosine=0.999,
            atol=1.0,
            epsilon=2.0**-7,
            reason="bf16 (u = 2^-8, 8 times fp16's): worst cosine 0.99984 and 2.6e-2 measured, about 0.4 at "
            "trained scores; two bf16 runs may differ by twice one's distance from fp32",
        ),
        Bar(
            "om",
            min_cosine=0.99,
            atol=1.0,
            epsilon=2.0**-10,
            reason="an Ascend OM model (fp16 inside by default, Gelu=high_performance): Ascend's "
            "accuracy-comparison rule of thumb, a cosine above 0.99 is acceptable, an absolute error above 1 "
            "fails",
        ),
    )
}
ORDER = tuple(BARS)
# Same top-1 is required on every image whose reference top-1 leads the runner-up by more than the precision
# can move a logit (TIE_FACTOR x its epsilon x the image's largest logit). Random weights give near-ties that
# any rounding may swap; trained weights on real photos lead by far more.
TIE_FACTOR = 16


def bar_of(precision: str) -> Bar:
    """The bar of one precision; an unknown name gets the fp16 bar (the strictest reduced precision)."""
    return BARS.get(precision, BARS["fp16"])


def lowest(*precisions: str | None) -> str | None:
    """The lowest of the known precisions among `precisions` (None where none is known)."""
    known = [precision for precision in precisions if precision in BARS]
    return max(known, key=ORDER.index) if known else None


def bars_text() -> str:
    """The table in one line, for --help: 'fp32: cosine >= 0.99999, max |a-b| <= 0.0001; ...'."""
    return "; ".join(
        f"{bar.precision}: cosine >= {bar.min_cosine:g}, max |a-b| <= {bar.atol:g}" for bar in BARS.values()
    )
