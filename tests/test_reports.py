"""
The measured results under projects/GFL/results: every Markdown report is what its tool renders from
the JSON
beside it, so a number has one source; the renderers are the ones behind each tool's --report.
"""

import json
import os

import pytest

from gfl_studies import (
    ablation,
    benchmark,
    coco_eval_speed,
    cpu_throughput,
    dcn_speed,
    edge_benchmark,
    edge_training,
    edge_uncertainty,
    fcos_collapse,
    gpu_check,
    int8_study,
    ld_agreement,
    mmdet_peer,
    own_data_study,
    quality_study,
    quickstart,
)

from .repo import ROOT

RESULTS = os.path.join(ROOT, "projects", "GFL", "results")
# report name prefix -> the renderer of the tool that writes it
RENDERERS = [
    ("int8_", int8_study.render),
    ("gpu_check_h100_int8", int8_study.render),
    ("gpu_check_h200_int8", int8_study.render),
    ("edge_benchmark", edge_benchmark.render),
    ("edge_training", edge_training.render),
    ("dcn_speed", dcn_speed.render),
    ("gpu_check_h100_dcn_speed", dcn_speed.render),
    ("gpu_check_h200_dcn_speed", dcn_speed.render),
    ("ablation", ablation.render_report),
    ("lr_tuning", ablation.render_report),
    ("fcos_collapse", fcos_collapse.render),
    ("benchmark_mmdet", mmdet_peer.render),
    ("benchmark", benchmark.render),
    ("gpu_check_h100_benchmark", benchmark.render),
    ("gpu_check_h100_cpu", cpu_throughput.render),
    ("gpu_check_h200_cpu", cpu_throughput.render),
    ("gpu_check", gpu_check.render),
    ("own_data_study", own_data_study.render_report),
    ("own_data_lr_tuning", own_data_study.render_report),
    ("quality_correlation", quality_study.render),
    ("edge_uncertainty", edge_uncertainty.render),
    ("quickstart", quickstart.render),
    ("ld_agreement", ld_agreement.render),
    ("coco_eval_speed", coco_eval_speed.render),
    ("cpu_throughput", cpu_throughput.render),
    ("ld_", ablation.render_report),  # tools/ablation.py --tables ld
]


def _renderer(name):
    return next(render for prefix, render in RENDERERS if name.startswith(prefix))


REPORTS = sorted(f[:-3] for f in os.listdir(RESULTS) if f.endswith(".md") and f != "README.md")


def test_every_report_has_its_json_and_a_tool():
    assert REPORTS, RESULTS
    for name in REPORTS:
        assert os.path.isfile(os.path.join(RESULTS, f"{name}.json")), (
            f"{name}.md has no {name}.json"
        )
        _renderer(name)  # StopIteration: no tool writes this report


@pytest.mark.parametrize("name", REPORTS)
def test_report_is_rendered_from_its_json(name):
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        data = json.load(f)
    with open(os.path.join(RESULTS, f"{name}.md")) as f:
        assert f.read() == _renderer(name)(data).rstrip("\n") + "\n", (
            f"re-render: tools/... --report --name {name}"
        )
