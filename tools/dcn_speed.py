#!/usr/bin/env python
"""
Inference speed of the model zoo's deformable-convolution models against their
plain twins (gfl_studies.dcn_speed); writes ``<results>/<name>.json`` and ``.md``.

    python tools/dcn_speed.py                                   # CPU, 512x768
    python tools/dcn_speed.py --device cuda --size 800 1216 --name dcn_speed_h100
    python tools/dcn_speed.py --report --name dcn_speed_cpu_2cores   # the .md again
"""

import sys

from gfl_studies.dcn_speed import main

if __name__ == "__main__":
    sys.exit(main())
