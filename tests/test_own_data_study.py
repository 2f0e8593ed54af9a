"""What the own-data study reads from the runs it starts: the log lines and metrics.json of the entry point."""
import json

from gfl_studies.own_data_study import bin_advice, bin_summary, copypaste_metrics, final_metrics

FIT = ("[11/26 15:01:04 detectron2]: GFL bins: 16688 regression targets of 200 images: median 2.09, 99% within "
       "7.95 strides (per level: P3 8.0, P4 4.0); the bins cover 16 x 1 strides, 0.00% of the targets beyond; "
       "n = 9 would cover 99%\n")
WARNING = ("[11/26 15:01:04 detectron2]: GFL bins: 99% of the regression targets lie within 5.1 strides, far inside "
           "the 16 bins: model.reg_max=6 model.head.box_channels=28 concentrates the distributions\n")


def test_bin_advice_reads_the_warning_and_the_recommendation():
    assert bin_advice(FIT) == (None, 9)
    assert bin_advice(FIT + WARNING) == (["model.reg_max=6", "model.head.box_channels=28"], 9)
    assert bin_summary(FIT).startswith("16688 regression targets") and bin_summary("nothing") == ""


def test_metrics_from_the_log_and_from_metrics_json(tmp_path):
    log = ("x copypaste: Task: bbox\nx copypaste: AP,AP50,AP75,APs,APm,APl\nx copypaste: 18.2,34.7,16.5,11.5,35.7,nan\n")
    got = copypaste_metrics(log)
    assert got["AP"] == 18.2 and got["APm"] == 35.7 and got["APl"] != got["APl"]
    with open(tmp_path / "metrics.json", "w") as f:
        f.write(json.dumps({"iteration": 9, "bbox/AP": 1.0}) + "\n" + json.dumps({"iteration": 19, "loss": 2}) + "\n")
        f.write(json.dumps({"iteration": 19, "bbox/AP": 2.5, "bbox/AP50": 7.0}) + "\n")
    assert final_metrics(str(tmp_path)) == {"AP": 2.5, "AP50": 7.0}
