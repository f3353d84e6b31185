"""Outside the pipeline's path: the annotated training and test sets and the real data folder
(:mod:`.annotations`), and the harness that scores ``hccbio slides run`` against them
(:mod:`.harness`). Used by models/ (training), benchmarks/ and the tests."""
