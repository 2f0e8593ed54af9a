"""gfl_d2.model_zoo finds the configs in any install: from a non-editable one, its copies."""

import json
import os
import subprocess
import sys

from .repo import ROOT

LOOKUP = """
import json, gfl_d2.model_zoo as z
cfg = z.get_config("Synthetic/gfl_R_18_FPN_shapes_quickstart.py")
reg_max = cfg.model.head.box2box_transform.reg_max
print(json.dumps(dict(module=z.__file__, default=z.DEFAULT_CONFIG, reg_max=reg_max,
                      coco=z.get_config_file("COCO-Detection/gfl_R_50_FPN_1x.py"),
                      yacs=z.get_config_file("OwnData/gfl_R_50_FPN_finetune.yaml"))))
"""


def test_configs_from_a_non_editable_install(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-compile",
            "-q",
            "--target",
            str(site),
            ROOT,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", LOOKUP],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["module"] == str(
        site / "gfl_d2" / "model_zoo.py"
    )  # the installed copy, not the checkout
    for key in ("default", "coco", "yacs"):
        assert found[key].startswith(str(site)) and os.path.isfile(found[key]), found[key]
    assert (
        found["default"].endswith("Synthetic/gfl_R_18_FPN_shapes_quickstart.py")
        and found["reg_max"] == 12
    )
    # the studies are installed beside the library
    assert (site / "gfl_studies" / "reports.py").is_file()
