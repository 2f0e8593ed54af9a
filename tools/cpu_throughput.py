#!/usr/bin/env python
"""
GFL R-50-FPN's CPU inference throughput as a fraction of the machine's own
convolution throughput, measured in the same run, float32 paths (eager,
channels-last, frozen) and bfloat16 where the CPU has bfloat16 units
(gfl_studies.cpu_throughput); writes ``<results>/<name>.json`` and ``.md``.

    python tools/cpu_throughput.py                                  # 800x1216, 5 runs
    python tools/cpu_throughput.py --inductor --name cpu_throughput_inductor_cpu_2cores
    python tools/cpu_throughput.py --checkpoint output/model_final.pth \
        --config Synthetic/gfl_R_18_FPN_shapes.py                  # + AP in fp32 and bf16
    python tools/cpu_throughput.py --report --name cpu_throughput_cpu_2cores   # the .md again
"""

import sys

from gfl_d2.errors import UsageError
from gfl_studies.cpu_throughput import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        sys.exit(f"error: {e}")
