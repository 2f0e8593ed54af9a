"""
The studies behind gfl-d2's measured results, apart from the library: the
paper's ablations (:mod:`.ablation`), GFL against FCOS on a dataset folder
(:mod:`.own_data_study`), the quality-correlation and edge-uncertainty
studies (:mod:`.quality_study`, :mod:`.edge_uncertainty`), the benchmark
driver shared by the benchmark and the GPU check (:mod:`.benchmark`,
:mod:`.gpu_check`), the speed of COCO evaluation (:mod:`.coco_eval_speed`),
the study dataset "bars" (:mod:`.bars`), and their reports
(:mod:`.reports`). They import ``gfl_d2``; ``gfl_d2`` never imports them.
The command lines are the scripts in ``tools/``, a study's named as its
module (the GPU check's is ``tools/gpu_check.sh``).
"""
