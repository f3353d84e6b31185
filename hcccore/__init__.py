"""hcccore: what every arm writes into a run folder the same way.

The arms (``pathology``, ``blood``, ``transcriptome``) import this package; it imports none of
them. It holds:

- :mod:`hcccore.atomic`: atomic writes (text, bytes, CSV, JSON, Parquet, PNG) through a
  temporary sibling and ``os.replace``, so a killed run never leaves half a file;
- :mod:`hcccore.spreadsheet`: cells that no spreadsheet runs as formulas, and their undoing;
- :mod:`hcccore.lock`: the run lock ``OUT/.hccbio.lock`` that keeps two runs out of one folder;
- :mod:`hcccore.batch_report`: ``OUT/batch_report.csv``, one row per sample (``sample_id``,
  ``status`` done/skipped/failed, ``reason``, ``seconds``), read, merged and written;
- :mod:`hcccore.sample_features`: each sample folder's own ``features.json`` and the run table
  rebuilt from every finished sample of the folder (a second run adds to it, never replaces);
- :mod:`hcccore.provenance`: the versions of Python and of the packages behind a result;
- :mod:`hcccore.yamlfile`: a config file read as UTF-8 YAML, its errors of the arm's own type.
"""
