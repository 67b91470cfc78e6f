"""Stand-in for `python3 -m ais_bench`: the command-line flags the toolkit's scripts pass to ais_bench, run by the
toolkit's own `ais` backend (which drives this package's InferSession). It writes ais_bench's output layout, so it
proves that test/eval_acc_perf.sh assembles the ais_bench commands and reads their results correctly; it says
nothing about the real tool on a real NPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import twins_pcpvt_s_infer  # noqa: E402

raise SystemExit(twins_pcpvt_s_infer.main([*sys.argv[1:], "--backend", "ais", "--no-progress"]))
