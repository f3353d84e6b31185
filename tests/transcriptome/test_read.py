"""Reading expression files: formats, gene ids, and clear errors naming the file."""

from __future__ import annotations

import pandas as pd
import pytest

from transcriptome.config import DEFAULT_GENE_MAP
from transcriptome.errors import ExpressionError
from transcriptome.genes import load_gene_map, to_symbols
from transcriptome.read import read_expression


def _write_table(path, counts: pd.DataFrame, sep: str) -> None:
    counts.rename_axis("gene").reset_index().to_csv(path, sep=sep, index=False)


def test_csv_and_tsv_read_the_same(tmp_path, breast_cancer_counts):
    counts = breast_cancer_counts.iloc[:, :5]
    _write_table(tmp_path / "m.csv", counts, ",")
    _write_table(tmp_path / "m.tsv.gz", counts, "\t")
    first = read_expression(tmp_path / "m.csv")
    second = read_expression(tmp_path / "m.tsv.gz")
    pd.testing.assert_frame_equal(first.values, second.values)
    pd.testing.assert_frame_equal(first.values, counts, check_names=False)
    assert first.file_format == "table" and first.value_type_hint is None


def test_featurecounts_and_salmon(tmp_path, breast_cancer_counts):
    counts = breast_cancer_counts.iloc[:, :2]
    lines = ["# Program:featureCounts v2.0.6; Command:\"featureCounts\" ...",
             "Geneid\tChr\tStart\tEnd\tStrand\tLength\t/data/bam/P1.bam\tP2.bam"]
    lines += [f"{g}\tchr1\t1\t100\t+\t100\t{int(a)}\t{int(b)}" for g, (a, b) in
              zip(counts.index, counts.to_numpy(), strict=True)]
    (tmp_path / "fc.txt").write_text("\n".join(lines) + "\n")
    matrix = read_expression(tmp_path / "fc.txt")
    assert matrix.file_format == "featurecounts" and list(matrix.values.columns) == ["P1", "P2"]
    assert matrix.values.iloc[:, 0].tolist() == counts.iloc[:, 0].tolist()
    sf = ["Name\tLength\tEffectiveLength\tTPM\tNumReads",
          "ENSG00000120217.14\t3000\t2800\t5.1\t12.5",
          "ENSG00000147257.16\t2000\t1800\t0\t0"]
    (tmp_path / "quant.genes.sf").write_text("\n".join(sf) + "\n")
    salmon = read_expression(tmp_path / "quant.genes.sf")
    assert salmon.single_sample and salmon.value_type_hint == "counts"
    mapped = to_symbols(salmon.values, gene_map=load_gene_map(DEFAULT_GENE_MAP), source="sf")
    assert mapped["NumReads"].to_dict() == {"CD274": 12.5, "GPC3": 0.0}
    (tmp_path / "quant.sf").write_text(sf[0] + "\nENST00000381577.4\t3000\t2800\t5.1\t12.5\n")
    with pytest.raises(ExpressionError, match="transcript-level"):
        read_expression(tmp_path / "quant.sf")


def test_duplicated_genes_named(tmp_path):
    (tmp_path / "dup.csv").write_text("gene,s1\nAFP,1\nGPC3,2\nAFP,3\n")
    with pytest.raises(ExpressionError, match=r"dup\.csv: duplicated gene identifier\(s\) AFP"):
        read_expression(tmp_path / "dup.csv")
    (tmp_path / "dupv.csv").write_text("gene,s1\nENSG00000081051.8,1\nENSG00000081051.9,2\n")
    values = read_expression(tmp_path / "dupv.csv").values
    with pytest.raises(ExpressionError, match="dupv.csv: duplicated gene.*ENSG00000081051"):
        to_symbols(values, gene_map=None, source=tmp_path / "dupv.csv")


def test_non_numeric_and_missing_file(tmp_path):
    (tmp_path / "bad.csv").write_text("gene,s1,s2\nAFP,1,2\nGPC3,x,3\n")
    with pytest.raises(ExpressionError, match=r"bad\.csv: column 's1', data row 3: value 'x'"):
        read_expression(tmp_path / "bad.csv")
    with pytest.raises(ExpressionError, match="not found"):
        read_expression(tmp_path / "absent.csv")
