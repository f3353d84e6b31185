"""Cells from nuclei: shape and intensity per nucleus (:mod:`.measure`, the columns of
``cells.parquet``), marker panels (:mod:`.panels`), phenotypes (:mod:`.phenotypes`), the H&E
lymphocyte classifier (:mod:`.lymphocytes`) and nucleus-class patch network
(:mod:`.nucleus_classes`), IHC pigment (:mod:`.pigment`) and scores (:mod:`.scores`: H-score,
PD-L1 TPS / CPS)."""
