"""
What the own-data study reads from the runs it starts (the log lines and metrics.json of the
entry point), and its report.
"""

import io
import json
import logging
from collections import OrderedDict

import pytest
from detectron2.evaluation.testing import print_csv_format

from gfl_studies.own_data_study import (
    copypaste_metrics,
    final_metrics,
    read_bin_fit,
    render,
    summarize,
)

from .repo import run_tool


def test_the_study_reads_the_bin_check_that_training_wrote(tmp_path):
    """The bin check's fit as log_bin_fit writes it into a run's folder, read back by the study."""
    import numpy as np

    from gfl_d2.bins import BIN_FIT_FILE, bin_fit
    from gfl_studies.own_data_study import _first_gfl_bins

    targets = np.linspace(0.1, 5.0, 500)  # 99% within ~5 strides: far inside 16 bins
    fit = bin_fit(targets, np.full(500, 8), reg_max=16, bin_width=1.0)
    assert fit["advised_change"] == "model.head.box2box_transform.reg_max=6"
    fit["summary"] = "500 regression targets of 10 images"
    (tmp_path / BIN_FIT_FILE).write_text(json.dumps(fit))
    assert read_bin_fit(str(tmp_path))["recommended_reg_max"] == 6
    advice, why, summary = _first_gfl_bins(str(tmp_path))
    assert advice == ["model.head.box2box_transform.reg_max=6"] and why == "the warning's advice"
    assert summary == fit["summary"]
    assert read_bin_fit(str(tmp_path / "none")) == {}
    assert _first_gfl_bins(str(tmp_path / "none")) == ([], "recommended n, no warning", "")


def print_csv_format_log(results):
    """What detectron2's ``print_csv_format`` logs for ``results``, captured from it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("detectron2.evaluation.testing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        print_csv_format(results)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_metrics_from_the_log_and_from_metrics_json(tmp_path):
    bbox = OrderedDict(AP=18.2, AP50=34.7, AP75=16.5, APs=11.5, APm=35.7, APl=float("nan"))
    segm = OrderedDict(AP=1.0, AP50=2.0)
    # an eval-only run's one record of its results: detectron2's copypaste lines
    log = print_csv_format_log(OrderedDict(bbox=bbox, segm=segm))
    got = copypaste_metrics(log)
    assert got["AP"] == 18.2 and got["APm"] == 35.7 and got["APl"] != got["APl"]  # not segm's
    assert copypaste_metrics(log, "segm") == dict(segm)
    with pytest.raises(RuntimeError, match="no copypaste: metrics of bbox"):
        copypaste_metrics(print_csv_format_log(OrderedDict(segm=segm)))
    with open(tmp_path / "metrics.json", "w") as f:
        f.write(
            json.dumps({"iteration": 9, "bbox/AP": 1.0})
            + "\n"
            + json.dumps({"iteration": 19, "loss": 2})
            + "\n"
        )
        f.write(json.dumps({"iteration": 19, "bbox/AP": 2.5, "bbox/AP50": 7.0}) + "\n")
    assert final_metrics(str(tmp_path)) == {"AP": 2.5, "AP50": 7.0}


def test_report_is_rendered_from_the_runs_and_again_from_its_json(tmp_path):
    runs = [
        dict(
            seed=0,
            metrics=dict(AP=18.2, AP50=34.5, AP75=16.5, APs=11.4, APm=35.0, APl=float("nan")),
        ),
        dict(
            seed=1,
            metrics=dict(AP=18.0, AP50=34.9, AP75=16.5, APs=11.6, APm=36.0, APl=float("nan")),
        ),
    ]
    data = dict(
        setup=dict(dataset="/data/bars", seeds=[0, 1], settings="train.max_iter=500"),
        bin_check="16688 regression targets",
        bins_compared=None,
        models=[
            dict(name="GFL", runs=runs, summary=summarize(runs)),
            dict(
                name="FCOS",
                runs=runs[:1],
                summary=summarize([dict(seed=0, metrics=dict(AP=float("nan")))]),
            ),
        ],
    )
    md = render(data)
    assert (
        "| GFL | 18.1 ± 0.1 | 34.7 ± 0.3 | 16.5 ± 0.0 | 11.5 ± 0.1 | 35.5 ± 0.7 | – | 2 | 18.2, "
        "18.0 |" in md
    )
    assert (
        "| FCOS | – | – | – | – | – | – | 1 | nan |" in md
        and "Bins compared: none (n already fits)" in md
    )
    (tmp_path / "study.json").write_text(json.dumps(data))
    proc = run_tool(
        ["tools/own_data_study.py", "--report", "--results", tmp_path, "--name", "study"]
    )
    assert (tmp_path / "study.md").read_text() == md + "\n" and proc.stdout.strip() == md
