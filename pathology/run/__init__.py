"""The runner: the one place that decides the order of pathology's steps, what is cached and
where files go, and the only code that knows the run folder and the schedulers.

:mod:`.batch` runs many slides into one run folder (batch report, skipping finished slides,
one failure never stopping the others) in this process or on Dask (:mod:`.schedulers`: sync,
``local[:N]``, ``tcp://HOST:PORT``, SLURM); :mod:`.pipeline` takes one slide through reading,
tissue, tiles, nuclei and cell measurement, resumable tile by tile (:mod:`.store`);
:mod:`.finish` then runs QC, features and the QC overlays in that order; :mod:`.serial`
resolves serial-section blocks (a slide is registered once its block's reference is done);
:mod:`.tables` gathers the run's tables and :mod:`.qc_summary` its QC table and page, with the
pathologist's decisions (``qc/review.csv``: :mod:`.review_log`, written by :mod:`.decisions`
for the review app, :mod:`pathology.review`); :mod:`.layout` names the run folder's files,
:mod:`.provenance` writes ``run.json``, :mod:`.progress` shows progress and :mod:`.report`
holds the batch report's rows. The run lock and atomic writes come from :mod:`hcccore`.
"""
