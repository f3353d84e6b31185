"""The transcriptome config: shipped YAML equals the defaults; unknown keys are refused."""

from __future__ import annotations

import pytest

from transcriptome.config import ConfigError, TranscriptomeConfig, load_config


def test_shipped_yaml_equals_defaults(project_root):
    config = load_config(project_root / "configs" / "transcriptome.yaml")
    assert config == TranscriptomeConfig()
    assert config.digest() == TranscriptomeConfig().digest()


def test_unknown_key_and_relative_paths(tmp_path):
    (tmp_path / "sets.gmt").write_text("x\tx\tA\tB\tC\n")
    good = tmp_path / "t.yaml"
    good.write_text("signatures:\n  gene_sets: [sets.gmt]\n  methods: [ssgsea]\n")
    assert load_config(good).signatures.gene_sets == ((tmp_path / "sets.gmt").resolve(),)
    bad = tmp_path / "bad.yaml"
    bad.write_text("normalise:\n  methd: tmm\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml:.*methd"):
        load_config(bad)
