"""What the own-data study reads from the runs it starts (the log lines and metrics.json of the entry point), and its report."""

import json

from gfl_d2.testing import run_tool
from gfl_studies.own_data_study import (
    bin_advice,
    bin_summary,
    copypaste_metrics,
    final_metrics,
    render,
    summarize,
)

FIT = (
    "[11/26 15:01:04 detectron2]: GFL bins: 16688 regression targets of 200 images: median 2.09, 99% within "
    "7.95 strides (per level: P3 8.0, P4 4.0); the bins cover 16 x 1 strides, 0.00% of the targets beyond; "
    "n = 9 would cover 99%\n"
)
WARNING = (
    "[11/26 15:01:04 detectron2]: GFL bins: 99% of the regression targets lie within 5.1 strides, far inside "
    "the 16 bins: model.reg_max=6 concentrates the distributions\n"
)


def test_bin_advice_reads_the_warning_and_the_recommendation():
    assert bin_advice(FIT) == (None, 9)
    assert bin_advice(FIT + WARNING) == (["model.reg_max=6"], 9)
    assert bin_summary(FIT).startswith("16688 regression targets") and bin_summary("nothing") == ""


def test_metrics_from_the_log_and_from_metrics_json(tmp_path):
    log = "x copypaste: Task: bbox\nx copypaste: AP,AP50,AP75,APs,APm,APl\nx copypaste: 18.2,34.7,16.5,11.5,35.7,nan\n"
    got = copypaste_metrics(log)
    assert got["AP"] == 18.2 and got["APm"] == 35.7 and got["APl"] != got["APl"]
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
        "| GFL | 18.1 ± 0.1 | 34.7 ± 0.3 | 16.5 ± 0.0 | 11.5 ± 0.1 | 35.5 ± 0.7 | – | 2 | 18.2, 18.0 |"
        in md
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
