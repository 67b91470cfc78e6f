"""Installs the OpenVINO broken-stream double (../ov_faults.py) at start-up when its environment variable is
set; a test puts this folder on PYTHONPATH for the processes it starts."""

import os
import sys

if os.environ.get("TWINS_PCPVT_TEST_OV_NAN"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import ov_faults

    ov_faults.install_from_env()
