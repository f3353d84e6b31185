"""The study manifest contract: valid files read, every violation names file, line and column."""

from __future__ import annotations

import pytest

from integration.manifest import ManifestError, read_manifest

HEADER = "patient_id,timepoint,sample_id,modality,stain,path,mpp\n"


def _write(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "samples.csv"
    path.write_text(header + body)
    return path


def test_valid_manifest_resolves_relative_paths(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"")
    path = _write(tmp_path, "P1,baseline,s1,HE,HE,a.svs,0.25\nP1,on_treatment,s2,flow,T,b.fcs,\n")
    samples = read_manifest(path)
    assert [s.sample_id for s in samples] == ["s1", "s2"]
    assert samples[0].modality == "he" and samples[0].mpp == 0.25
    assert samples[0].path == (tmp_path / "a.svs").resolve()
    assert samples[1].mpp is None and samples[1].row == 3


@pytest.mark.parametrize("body,words", [
    ("P1,week6,s1,he,HE,a.svs,\n", ["line 2", "timepoint", "week6"]),
    ("P1,baseline,s1,xray,HE,a.svs,\n", ["line 2", "modality", "xray"]),
    ("P1,baseline,s1,he,HE,a.svs,\nP2,baseline,s1,he,HE,b.svs,\n", ["line 3", "duplicates line 2"]),
    ("P1,baseline,s1,he,HE,a.svs,abc\n", ["line 2", "mpp", "abc"]),
    ("P1,baseline,s1,he,HE,a.svs,-1\n", ["line 2", "mpp", "positive"]),
    ("P1,baseline,,he,HE,a.svs,\n", ["line 2", "sample_id", "empty"]),
    ("P1,baseline,../x,he,HE,a.svs,\n", ["line 2", "sample_id"]),
])
def test_manifest_errors_name_row_and_column(tmp_path, body, words):
    path = _write(tmp_path, body)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_columns_are_listed(tmp_path):
    path = _write(tmp_path, "P1,s1\n", header="patient_id,sample_id\n")
    with pytest.raises(ManifestError, match="timepoint, modality, stain, path"):
        read_manifest(path)


def test_missing_file_checked_on_request(tmp_path):
    path = _write(tmp_path, "P1,baseline,s1,he,HE,nope.svs,\n")
    assert read_manifest(path)  # batch runs report missing files per sample
    with pytest.raises(ManifestError, match="nope.svs not found"):
        read_manifest(path, check_files=True)
