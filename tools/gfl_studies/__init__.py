"""
The studies behind gfl-d2's measured results, apart from the library: the
paper's ablations (:mod:`.ablation`), GFL against FCOS on a dataset folder
(:mod:`.own_data_study`), the quality-correlation and edge-uncertainty
studies (:mod:`.quality_study`, :mod:`.edge_uncertainty`), the benchmark
driver shared by the benchmark and the GPU check (:mod:`.benchmark`,
:mod:`.gpu_check`), and their reports (:mod:`.reports`). They import
``gfl_d2``; ``gfl_d2`` never imports them. The command lines are the
scripts in ``tools/``.
"""
