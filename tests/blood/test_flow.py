"""Flow cytometry on the real FCS files of ../shared/data/flow."""

from __future__ import annotations

import re

import flowkit as fk
import numpy as np
import pandas as pd
import pytest

from blood.errors import BloodInputError
from blood.flow.compensate import compensate, file_spillover, read_matrix
from blood.flow.gates import GatesFile, build_strategy, load_gating, read_gates_yaml
from blood.flow.pipeline import analyse_fcs, flow_features
from blood.flow.plots import channel_values
from blood.flow.populations import BeadCounting, add_absolute_counts
from blood.flow.qc import acquisition_qc
from blood.flow.read import read_fcs
from blood.flow.transforms import TransformSpec, make_transform

# (folder/file, FCS version, events, parameters) as documented in flow/SOURCE.txt
FILES = [
    ("fcsparser/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs", "3.0", 11585, 11),
    ("fcsparser/HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs", "3.0", 14945, 11),
    ("fcsparser/Cytek_xP5.fcs", "3.0", 23126, 8),
    ("fcsparser/Sample_Well_A02.fcs", "2.0", 37395, 8),
    ("fcsparser/cyflow_cube_8.fcs", "3.0", 725, 10),
    ("fcsparser/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs", "3.1", 10000, 19),
    ("flowkit/100715.fcs", "2.0", 65016, 16),
]
TCELL = "flowkit/100715.fcs"


@pytest.fixture(scope="module")
def gates_yaml(project_root):
    return project_root / "configs" / "gates" / "tcell_100715.yaml"


@pytest.fixture(scope="module")
def tcell(shared_data):
    return read_fcs(shared_data / "flow" / TCELL)


@pytest.mark.parametrize(("name", "version", "events", "params"), FILES)
def test_every_fcs_file_reads(shared_data, name, version, events, params):
    fcs = read_fcs(shared_data / "flow" / name)
    assert fcs.version == version
    assert fcs.event_count == events
    assert len(fcs.channels) == params
    assert np.isfinite(fcs.sample.get_events(source="raw")).all()


def test_quirky_files_are_read_and_the_quirk_recorded(shared_data):
    miltenyi = read_fcs(shared_data / "flow/fcsparser/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs")
    assert any("offset" in q for q in miltenyi.quirks)
    cytek = read_fcs(shared_data / "flow/fcsparser/Cytek_xP5.fcs")  # 24-bit integers
    assert any("bit width" in q for q in cytek.quirks)
    raw = cytek.sample.get_events(source="raw")
    # a right decoding gives a non-decreasing time channel and 10-bit scatter values
    assert np.all(np.diff(raw[:, cytek.sample.time_index]) >= 0)
    fsc = raw[:, cytek.channels.index("FSC")]
    assert fsc.min() >= 0 and fsc.max() <= 1023 and np.unique(fsc).size > 100


def test_clean_file_has_no_quirks(tcell):
    assert tcell.quirks == ()


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(BloodInputError, match="not found"):
        read_fcs(tmp_path / "absent.fcs")
    bad = tmp_path / "bad.fcs"
    bad.write_bytes(b"FCS3.0  garbage" * 10)
    with pytest.raises(BloodInputError, match="bad.fcs"):
        read_fcs(bad)


def test_compensation_agrees_with_flowkit_and_with_the_matrix_inverse(tcell, shared_data):
    matrix = file_spillover(tcell.sample)
    assert matrix is not None and len(matrix.detectors) == 13
    ours = compensate(tcell.sample, matrix)
    reference = fk.Sample(shared_data / "flow" / TCELL)
    reference.apply_compensation(reference.metadata["spill"])
    np.testing.assert_allclose(ours, reference.get_events(source="comp"), rtol=1e-10)
    # independent check: compensated = raw @ inv(spillover) on the fluorescence channels
    raw = tcell.sample.get_events(source="raw")
    idx = [tcell.channels.index(d) for d in matrix.detectors]
    np.testing.assert_allclose(ours[:, idx], raw[:, idx] @ np.linalg.inv(matrix.matrix),
                               rtol=1e-8, atol=1e-6)


def test_transforms_agree_with_flowkit(tcell, shared_data):
    reference = fk.Sample(shared_data / "flow" / TCELL)
    reference.apply_compensation(reference.metadata["spill"])
    flowkit_xform = fk.transforms.LogicleTransform(param_t=262144, param_w=0.5, param_m=4.5,
                                                   param_a=0)
    reference.apply_transform(flowkit_xform)
    ours = make_transform(TransformSpec(type="logicle", t=262144, w=0.5, m=4.5, a=0))
    comp = compensate(tcell.sample, file_spillover(tcell.sample))
    fluoro = tcell.sample.fluoro_indices
    np.testing.assert_allclose(ours.apply(comp[:, fluoro]),
                               reference.get_events(source="xform")[:, fluoro], rtol=1e-10)
    asinh = make_transform(TransformSpec(type="asinh", t=262144, m=4.5, a=0))
    values = comp[:1000, fluoro]
    back = asinh.inverse(asinh.apply(values))
    np.testing.assert_allclose(back, values, rtol=1e-6, atol=1e-6)
    # monotone: ordering of events is kept
    column = values[:, 0]
    assert np.all(np.diff(ours.apply(np.sort(column).reshape(-1, 1)).ravel()) >= 0)


def test_supplied_spillover_csv_is_read_and_checked(shared_data, tcell):
    matrix = read_matrix(shared_data / "flow/flowkit/8_color_den_comp.csv")
    assert matrix.matrix.shape == (8, 8)
    assert matrix.detectors[0] == "TNFa FITC FLR-A"
    with pytest.raises(BloodInputError, match="not channels of"):
        compensate(tcell.sample, matrix)


def test_compensated_gate_maps_to_compensated_data(tcell, gates_yaml):
    """A gate on compensated logicle CD3 counts exactly the events numpy finds there."""
    gating = load_gating(gates_yaml)
    results = gating.strategy.gate_sample(tcell.sample)
    live = np.asarray(results.get_gate_membership("live"))
    gate = gating.strategy.get_gate("cd3")
    cd3_values = channel_values(tcell.sample, gating.strategy, gate.dimensions[0])
    expected = int((live & (cd3_values >= 0.3)).sum())
    assert results.get_gate_count("cd3") == expected
    raw_values = tcell.sample.get_events(source="raw")[:, tcell.channels.index("R780-A")]
    uncompensated = make_transform(TransformSpec(type="logicle")).apply(
        raw_values.reshape(-1, 1)).ravel()
    assert int((live & (uncompensated >= 0.3)).sum()) != expected  # compensation matters


def test_yaml_gates_give_plausible_and_stable_cd4_cd8(tcell, gates_yaml, tmp_path):
    result = analyse_fcs(tcell.path, gates_yaml, tmp_path, plots=False)
    table = result.populations.set_index("population")
    cd4, cd8 = table.loc["cd4", "pct_parent"], table.loc["cd8", "pct_parent"]
    assert table.loc["cd4", "parent"] == "cd3" and table.loc["cd8", "parent"] == "cd3"
    assert 40 < cd4 < 85 and 10 < cd8 < 50 and cd4 + cd8 <= 100
    assert 1 < cd4 / cd8 < 6  # healthy adult CD4:CD8 ratio range, widened
    # boolean gate: cd4 and cd8 are disjoint, so 'or' is their sum
    assert table.loc["cd4_or_cd8", "count"] == table.loc["cd4", "count"] + table.loc["cd8",
                                                                                      "count"]
    # quadrant children of cd4 partition it
    quadrants = ["cd4_naive", "cd4_tcm", "cd4_tem", "cd4_temra"]
    assert table.loc[quadrants, "count"].sum() == table.loc["cd4", "count"]
    np.testing.assert_allclose(table["pct_total"], 100 * table["count"] / tcell.event_count)
    # stability: moving the CD4 threshold by +/-0.02 logicle units moves CD4 by < 8 points
    spec = read_gates_yaml(gates_yaml)
    for shift in (-0.02, 0.02):
        gates = [g if g.id != "cd4" else g.model_copy(update={"dimensions": [
            g.dimensions[0].model_copy(update={"min": g.dimensions[0].min + shift}),
            g.dimensions[1]]}) for g in spec.gates]
        strategy = build_strategy(spec.model_copy(update={"gates": gates}),
                                  base=gates_yaml.parent)
        moved = strategy.gate_sample(tcell.sample)
        assert abs(moved.get_gate_relative_percent("cd4") - cd4) < 8


def test_same_input_same_numbers(tcell, gates_yaml, tmp_path):
    first = analyse_fcs(tcell.path, gates_yaml, tmp_path / "a", plots=False).populations
    second = analyse_fcs(tcell.path, gates_yaml, tmp_path / "b", plots=False).populations
    pd.testing.assert_frame_equal(first, second)


def test_gatingml_round_trip_gives_the_same_populations(tcell, gates_yaml, tmp_path):
    gating = load_gating(gates_yaml)
    xml = tmp_path / "gates.xml"
    with xml.open("wb") as handle:
        fk.export_gatingml(gating.strategy, handle)
    from_yaml = analyse_fcs(tcell.path, gates_yaml, tmp_path / "y", plots=False).populations
    from_xml = analyse_fcs(tcell.path, xml, tmp_path / "x", plots=False).populations
    assert load_gating(xml).source == "gatingml"
    pd.testing.assert_frame_equal(from_yaml.sort_values("population").reset_index(drop=True),
                                  from_xml.sort_values("population").reset_index(drop=True))


def test_outputs_and_plots_are_written(tcell, gates_yaml, tmp_path):
    result = analyse_fcs(tcell.path, gates_yaml, tmp_path)
    assert (tmp_path / "populations.csv").is_file() and (tmp_path / "qc.json").is_file()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "gate_cd3.png" in pngs and "gate_cd4_memory.png" in pngs
    on_disk = pd.read_csv(tmp_path / "populations.csv")
    assert list(on_disk.columns[:5]) == ["population", "parent", "count", "pct_parent",
                                         "pct_total"]
    assert on_disk["count"].tolist() == result.populations["count"].tolist()


def test_bead_absolute_counts(tcell, gates_yaml, tmp_path):
    # stand-in bead gate on the real file: only the arithmetic is under test here
    beads = BeadCounting("cd8_cd57", beads_per_test=50_000, sample_volume_ul=50)
    table = analyse_fcs(tcell.path, gates_yaml, tmp_path, beads=beads,
                        plots=False).populations.set_index("population")
    bead_events = table.loc["cd8_cd57", "count"]
    expected = table.loc["cd3", "count"] / bead_events * 50_000 / 50
    assert table.loc["cd3", "cells_per_ul"] == pytest.approx(expected)
    assert table.loc["cd8_cd57", "cells_per_ul"] == pytest.approx(1000.0)
    with pytest.raises(BloodInputError, match="bead gate 'nope'"):
        add_absolute_counts(table.reset_index(), BeadCounting("nope", 1, 1), source="f")


def test_acquisition_qc_flags(shared_data):
    small = acquisition_qc(read_fcs(shared_data / "flow/fcsparser/cyflow_cube_8.fcs").sample)
    assert small.events == 725 and any("events" in f for f in small.flags)
    clean = acquisition_qc(read_fcs(shared_data / "flow/fcsparser/Sample_Well_A02.fcs").sample)
    assert clean.flags == () and clean.rate_cv < 0.3
    saturated = acquisition_qc(read_fcs(
        shared_data / "flow/fcsparser/HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs").sample)
    assert saturated.margin_fraction > 0.05 and any("margin" in f for f in saturated.flags)


def test_gates_for_other_channels_fail_with_the_file_named(shared_data, gates_yaml, tmp_path):
    cytek = shared_data / "flow/fcsparser/Cytek_xP5.fcs"
    with pytest.raises(BloodInputError, match="Cytek_xP5.fcs.*do not fit"):
        analyse_fcs(cytek, gates_yaml, tmp_path, plots=False)


@pytest.mark.parametrize(("text", "message"), [
    ("gates: [{id: a, type: rectangle, dimensions: [{channel: FSC-A, min: 1}]}, "
     "{id: b, parent: zz, type: rectangle, dimensions: [{channel: FSC-A, min: 1}]}]",
     "parent 'zz'"),
    ("gates: [{id: a, type: rectangle, dimensions: [{channel: FSC-A, transform: t}]}]",
     "transform 't'"),
    ("gates: [{id: a, type: ellipse}]", "gates.0.type"),
    ("gates: [{id: a, type: rectangle, colour: red}]", "colour"),
    ("gates: [{id: a, type: polygon, x: {channel: A}, y: {channel: B}, "
     "vertices: [[0, 0], [1, 1]]}]", "at least 3 vertices"),
])
def test_invalid_yaml_gates_are_refused_clearly(tmp_path, text, message):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(BloodInputError, match=message):
        load_gating(path)


def test_features_from_populations():
    table = pd.DataFrame({"population": ["cd3", "cd8"], "parent": ["root", "cd3"],
                          "count": [200, 50], "pct_parent": [20.0, 25.0],
                          "pct_total": [20.0, 5.0]})
    from blood.config import FlowFeature

    values = flow_features(table, [FlowFeature(name="flow_cd8_pct_cd3", population="cd8",
                                               of="cd3")], source="f")
    assert values == {"flow_cd8_pct_cd3": 25.0}
    with pytest.raises(BloodInputError, match="population 'treg'"):
        flow_features(table, [FlowFeature(name="x", population="treg", of="cd3")], source="f")
    assert isinstance(GatesFile.model_json_schema(), dict)


# ---------------------------------------------------------------- FlowJo workspaces
FLOWSOM = "flow/flowsom"  # FlowSOM's mouse panel, gated by hand in FlowJo 10.5.3 (SOURCE.txt)


def _flowjo_counts(wsp) -> dict[str, int]:
    """FlowJo's own stored count of every population, read straight from the XML."""
    import xml.etree.ElementTree as ET

    return {p.get("name"): int(p.get("count")) for p in ET.parse(wsp).iter("Population")}


def _two_sample_workspace(wsp, folder):
    """Synthetic: the real workspace with its sample copied under a second name."""
    text = wsp.read_text(encoding="utf-8")
    start, end = text.index("<Sample>"), text.index("</Sample>") + len("</Sample>")
    copy = text[start:end].replace('name="68983.fcs"', 'name="other.fcs"').replace(
        'sampleID="1"', 'sampleID="2"')
    path = folder / "two_samples.wsp"
    path.write_text(text[:end] + copy + text[end:], encoding="utf-8")
    return path


def test_flowjo_10_workspace_reproduces_flowjos_own_counts(shared_data, tmp_path):
    from typer.testing import CliRunner

    from integration.cli import app  # the hccbio command, as a user types it

    folder = shared_data / FLOWSOM
    run = CliRunner().invoke(app, ["blood", "flow", str(folder / "68983.fcs"), "--gates",
                                   str(folder / "gating.wsp"), "--out", str(tmp_path)])
    assert run.exit_code == 0, run.output
    ours = pd.read_csv(tmp_path / "populations.csv").set_index("population")["count"]
    flowjo = _flowjo_counts(folder / "gating.wsp")
    assert len(flowjo) == 15 and set(ours.index) == set(flowjo)
    for name, count in flowjo.items():
        # measured: at most 13 events apart (Lymphocytes 19,225 vs 19,212); the largest
        # relative gap 0.38 % (DN T cells, 267 vs 266)
        assert abs(ours[name] - count) <= 0.005 * count, name
    qc = pd.read_json(tmp_path / "qc.json", typ="series")
    assert qc["gates_format"] == "wsp" and qc["gates_sample"] == "68983.fcs"
    assert (tmp_path / "plots").is_dir()


def test_workspace_whose_only_sample_has_another_file_name(shared_data, tmp_path):
    from blood.batch import BloodJob, run_blood
    from blood.config import BloodConfig, FlowConfig

    folder = shared_data / FLOWSOM
    renamed = tmp_path / "P001_baseline.fcs"
    renamed.symlink_to(folder / "68983.fcs")
    config = BloodConfig(flow=FlowConfig(default_gates=folder / "gating.wsp", plots=False))
    result = run_blood([BloodJob("P001_BL", "flow", "mouse", renamed)], tmp_path / "run",
                       config=config)
    assert result.failed == []
    ours = pd.read_csv(tmp_path / "run" / "blood" / "P001_BL" / "populations.csv")
    flowjo = _flowjo_counts(folder / "gating.wsp")
    for row in ours.itertuples():
        assert abs(row.count - flowjo[row.population]) <= 0.005 * flowjo[row.population]
    qc = pd.read_json(tmp_path / "run" / "blood" / "P001_BL" / "qc.json", typ="series")
    assert qc["gates_sample"] == "68983.fcs"


def test_sample_option_maps_a_workspace_sample_to_the_file(shared_data, tmp_path):
    from typer.testing import CliRunner

    from blood.batch import BloodJob, run_blood
    from blood.config import BloodConfig, FlowConfig
    from integration.cli import app  # the hccbio command, as a user types it

    folder = shared_data / FLOWSOM
    wsp = _two_sample_workspace(folder / "gating.wsp", tmp_path)
    renamed = tmp_path / "P002.fcs"
    renamed.symlink_to(folder / "68983.fcs")
    base = ["blood", "flow", str(renamed), "--gates", str(wsp), "--no-plots", "--out"]
    ambiguous = CliRunner().invoke(app, [*base, str(tmp_path / "a")])
    assert ambiguous.exit_code == 2
    message = " ".join(ambiguous.output.split())
    assert "two_samples.wsp" in message and "'68983.fcs', 'other.fcs'" in message
    assert "--sample NAME" in message
    wrong = CliRunner().invoke(app, [*base, str(tmp_path / "b"), "--sample", "nope.fcs"])
    assert wrong.exit_code == 2 and "no sample 'nope.fcs'" in " ".join(wrong.output.split())
    chosen = CliRunner().invoke(app, [*base, str(tmp_path / "c"), "--sample", "other.fcs"])
    assert chosen.exit_code == 0, chosen.output
    counts = pd.read_csv(tmp_path / "c" / "populations.csv").set_index("population")["count"]
    flowjo = _flowjo_counts(folder / "gating.wsp")
    assert all(abs(counts[n] - c) <= 0.005 * c for n, c in flowjo.items())
    config = BloodConfig(flow=FlowConfig(default_gates=wsp, plots=False,
                                         wsp_samples={"P002_BL": "68983.fcs"}))
    jobs = [BloodJob("P002_BL", "flow", "mouse", renamed),
            BloodJob("P003_BL", "flow", "mouse", renamed)]  # not mapped: fails alone
    result = run_blood(jobs, tmp_path / "run", config=config)
    assert result.failed == ["P003_BL"]
    assert "flow.wsp_samples" in result.batch.set_index("sample_id").loc["P003_BL", "reason"]


# Pathological inputs, synthesised: the root element of a FlowJo 9 (Mac, workspace format
# 2.0), FlowJo 9 with an explicit version and FlowJo 7 (PC, format 1.61), with one sample.
OLD_WORKSPACE = """<?xml version="1.0" encoding="UTF-8"?>
<Workspace {attributes} xmlns:gating="http://www.isac-net.org/std/Gating-ML/v1.5/gating">
  <SampleList><Sample><DataSet uri="file:/data/68983.fcs" sampleID="1"/>
    <SampleNode name="68983.fcs" count="19225" sampleID="1"><Subpopulations>
      <Population name="Lymphocytes" count="19212"><PolygonGate>
        <gating:PolygonGate><gating:dimension><gating:parameter gating:name="FSC-A"/>
        </gating:dimension></gating:PolygonGate></PolygonGate></Population>
    </Subpopulations></SampleNode></Sample></SampleList>
</Workspace>
"""


@pytest.mark.parametrize(("attributes", "written_by"), [
    ('version="2.0"', "FlowJo 8 / 9 for Mac (workspace version 2.0)"),
    ('version="2.0" flowJoVersion="9.9.6"', "FlowJo 9.9.6"),
    ('version="1.61"', "FlowJo 7 for PC"),
])
def test_flowjo_9_and_7_workspaces_say_to_resave_in_flowjo_10(shared_data, tmp_path,
                                                              attributes, written_by):
    from typer.testing import CliRunner

    from integration.cli import app  # the hccbio command, as a user types it

    wsp = tmp_path / "old.wsp"
    wsp.write_text(OLD_WORKSPACE.format(attributes=attributes))
    run = CliRunner().invoke(app, ["blood", "flow", str(shared_data / FLOWSOM / "68983.fcs"),
                                   "--gates", str(wsp), "--out", str(tmp_path / "out")])
    assert run.exit_code == 2
    message = " ".join(run.output.split())
    assert f"old.wsp: this workspace was written by {written_by}" in message
    assert "open it in FlowJo 10 (or later) and save it again" in message
    assert not (tmp_path / "out" / "populations.csv").exists()


def test_other_files_given_as_workspaces_are_refused_clearly(shared_data, tmp_path):
    fcs = shared_data / FLOWSOM / "68983.fcs"
    (tmp_path / "notes.wsp").write_text("not xml")
    with pytest.raises(BloodInputError, match="notes.wsp: not a FlowJo workspace"):
        load_gating(tmp_path / "notes.wsp", fcs_path=fcs)
    (tmp_path / "gml.wsp").write_text("<gating:Gating-ML xmlns:gating='urn:x'/>")
    with pytest.raises(BloodInputError, match="root element .*expected <Workspace>"):
        load_gating(tmp_path / "gml.wsp", fcs_path=fcs)
    (tmp_path / "old.jo").write_bytes(b"\x00binary")
    with pytest.raises(BloodInputError, match="old.jo: a FlowJo 9.*save it again"):
        load_gating(tmp_path / "old.jo", fcs_path=fcs)


# ---------------------------------------------------------------- Gating-ML channel check
# Gating-ML 2.0 files written by the tests: synthetic gates on the real FCS files. A gate
# dimension compensated by a spectrumMatrix names one of the matrix's fluorochromes, which
# the file does not have as a channel: it is computed from the matrix's detectors.
GML = ('<?xml version="1.0" encoding="UTF-8"?>\n<gating:Gating-ML '
       'xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
       'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" '
       'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">\n'
       '{}\n</gating:Gating-ML>\n')
LOGICLE = ('<transforms:transformation transforms:id="Logicle"><transforms:logicle '
           'transforms:T="262144" transforms:W="0.5" transforms:M="4.5" transforms:A="0"/>'
           '</transforms:transformation>')
# fluorochrome -> detector of 100715.fcs (its $PnS says which marker each detector reads)
SPECTRUM = {"APC-Cy7": "R780-A", "BV786": "V800-A", "BV650": "V655-A", "BV421": "V450-A",
            "APC": "R660-A", "PE-CF594": "G610-A"}


def _fcs_dimensions(names) -> str:
    return "".join(f'<data-type:fcs-dimension data-type:name="{n}"/>' for n in names)


def _spectrum_matrix(matrix_id: str, fluorochromes, detectors, coefficients) -> str:
    spectra = "".join("<transforms:spectrum>" + "".join(
        f'<transforms:coefficient transforms:value="{float(v)!r}"/>' for v in row)
        + "</transforms:spectrum>" for row in coefficients)
    return (f'<transforms:spectrumMatrix transforms:id="{matrix_id}">'
            f"<transforms:fluorochromes>{_fcs_dimensions(fluorochromes)}"
            f"</transforms:fluorochromes><transforms:detectors>{_fcs_dimensions(detectors)}"
            f"</transforms:detectors>{spectra}</transforms:spectrumMatrix>")


def _dim(name: str, comp: str = "Spill", transform: str | None = "Logicle",
         lo: float | None = None, hi: float | None = None) -> str:
    attributes = f' gating:compensation-ref="{comp}"'
    for key, value in (("transformation-ref", transform), ("min", lo), ("max", hi)):
        attributes += f' gating:{key}="{value}"' if value is not None else ""
    return (f"<gating:dimension{attributes}>{_fcs_dimensions([name])}"
            "</gating:dimension>")


def _vertices(*points) -> str:
    return "".join(f'<gating:vertex><gating:coordinate data-type:value="{x}"/>'
                   f'<gating:coordinate data-type:value="{y}"/></gating:vertex>'
                   for x, y in points)


def _quadrant(name: str, x: float, y: float) -> str:
    return (f'<gating:Quadrant gating:id="{name}">'
            f'<gating:position gating:divider_ref="RO" gating:location="{x}"/>'
            f'<gating:position gating:divider_ref="CCR7" gating:location="{y}"/>'
            "</gating:Quadrant>")


def _spectrum_gates(tcell) -> str:
    """A T-cell hierarchy on 100715.fcs whose fluorescence gates name the fluorochromes of a
    spectrumMatrix (coefficients: the file's own $SPILL restricted to its six detectors); one
    gate of each kind, a ratio gate (FSC-H / FSC-A) for singlets."""
    spill = file_spillover(tcell.sample)
    index = [spill.detectors.index(d) for d in SPECTRUM.values()]
    ratio = ('<transforms:transformation transforms:id="HtoA"><transforms:fratio '
             f'transforms:A="1" transforms:B="0" transforms:C="0">'
             f'{_fcs_dimensions(["FSC-H", "FSC-A"])}</transforms:fratio>'
             "</transforms:transformation>")
    ellipse = ('<gating:mean><gating:coordinate data-type:value="0.75"/>'
               '<gating:coordinate data-type:value="0.25"/></gating:mean><gating:'
               'covarianceMatrix><gating:row><gating:entry data-type:value="0.04"/><gating:'
               'entry data-type:value="0"/></gating:row><gating:row><gating:entry data-type:'
               'value="0"/><gating:entry data-type:value="0.04"/></gating:row></gating:'
               'covarianceMatrix><gating:distanceSquare data-type:value="4"/>')
    divider = ('<gating:divider gating:id="{}" gating:compensation-ref="Spill" '
               'gating:transformation-ref="Logicle">{}<gating:value>{}</gating:value>'
               "</gating:divider>")
    return "\n".join([
        _spectrum_matrix("Spill", SPECTRUM, SPECTRUM.values(),
                         spill.matrix[np.ix_(index, index)]), LOGICLE, ratio,
        '<gating:RectangleGate gating:id="Lymphocytes">'
        f'{_dim("FSC-A", "uncompensated", None, 25000, 120000)}'
        f'{_dim("SSC-A", "uncompensated", None, hi=5000)}</gating:RectangleGate>',
        '<gating:RectangleGate gating:id="Singlets" gating:parent_id="Lymphocytes">'
        '<gating:dimension gating:compensation-ref="uncompensated" gating:min="0.75" '
        'gating:max="1.3"><data-type:new-dimension data-type:transformation-ref="HtoA"/>'
        "</gating:dimension></gating:RectangleGate>",
        '<gating:RectangleGate gating:id="Live" gating:parent_id="Singlets">'
        f'{_dim("BV421", hi=0.6)}</gating:RectangleGate>',
        '<gating:RectangleGate gating:id="CD3" gating:parent_id="Live">'
        f'{_dim("APC-Cy7", lo=0.3)}</gating:RectangleGate>',
        # a compensated dimension may also name the detector (V655-A: BV650) itself
        '<gating:PolygonGate gating:id="CD8" gating:parent_id="CD3">'
        f'{_dim("BV786")}{_dim("V655-A")}'
        f"{_vertices((0.3, -0.2), (1.05, -0.2), (1.05, 1.05), (0.6, 1.05), (0.6, 0.4))}"
        "</gating:PolygonGate>",
        '<gating:EllipsoidGate gating:id="CD4" gating:parent_id="CD3">'
        f'{_dim("BV650")}{_dim("BV786")}{ellipse}</gating:EllipsoidGate>',
        '<gating:QuadrantGate gating:id="CD4Memory" gating:parent_id="CD4">'
        f'{divider.format("RO", _fcs_dimensions(["APC"]), 0.45)}'
        f'{divider.format("CCR7", _fcs_dimensions(["PE-CF594"]), 0.5)}'
        f'{_quadrant("Naive", 0.2, 0.8)}{_quadrant("TCM", 0.8, 0.8)}'
        f'{_quadrant("TEM", 0.8, 0.2)}{_quadrant("TEMRA", 0.2, 0.2)}</gating:QuadrantGate>',
        '<gating:BooleanGate gating:id="CD4orCD8" gating:parent_id="CD3"><gating:or>'
        '<gating:gateReference gating:ref="CD4"/><gating:gateReference gating:ref="CD8"/>'
        "</gating:or></gating:BooleanGate>",
        '<gating:BooleanGate gating:id="NotCD8" gating:parent_id="CD3"><gating:not>'
        '<gating:gateReference gating:ref="CD8"/></gating:not></gating:BooleanGate>',
    ])


def _write_gml(path, body: str):
    path.write_text(GML.format(body))
    return path


def test_spectrum_matrix_gates_count_as_flowkit_counts_them(shared_data, tcell, tmp_path):
    """Issue 26: gates on a spectrumMatrix's fluorochromes were refused for every gate."""
    from typer.testing import CliRunner

    from integration.cli import app  # the hccbio command, as a user types it

    xml = _write_gml(tmp_path / "spectrum.xml", _spectrum_gates(tcell))
    run = CliRunner().invoke(app, ["blood", "flow", str(tcell.path), "--gates", str(xml),
                                   "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    ours = pd.read_csv(tmp_path / "out" / "populations.csv").set_index("population")["count"]
    # FlowKit, the reference implementation, on the same XML and the same file
    reference = fk.parse_gating_xml(str(xml)).gate_sample(fk.Sample(shared_data / "flow" / TCELL))
    flowkit = reference.report.set_index("gate_name")["count"]
    assert len(flowkit) == 12 and set(ours.index) == set(flowkit.index)
    assert all(ours[name] == count for name, count in flowkit.items())
    # every shape counted something, so agreement is not agreement on empty gates
    assert (flowkit > 100).all(), flowkit.to_dict()
    assert ours["Naive"] + ours["TCM"] + ours["TEM"] + ours["TEMRA"] == ours["CD4"]
    # review plots draw fluorochrome axes from their detectors' compensated values
    pngs = {p.name for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {"gate_Live.png", "gate_CD8.png", "gate_CD4Memory.png"} <= pngs


def _every_channel_gates(fcs) -> str:
    """A rectangle on every channel of ``fcs``: uncompensated, compensated by the file's
    spillover ('FCS'), and by a spectrumMatrix over its fluorescence detectors (identity
    coefficients: only the names are under test) through fluorochromes named otherwise."""
    detectors = [fcs.channels[i] for i in fcs.sample.fluoro_indices]
    dyes = [f"Dye {i}" for i in range(len(detectors))]
    gates = [_spectrum_matrix("Dyes", dyes, detectors, np.eye(len(detectors)))]
    dims = ([_dim(c, "uncompensated", None, lo=0) for c in fcs.channels]
            + [_dim(c, "FCS", None, lo=0) for c in detectors]
            + [_dim(d, "Dyes", None, lo=0) for d in [*dyes, *detectors]])
    gates += [f'<gating:RectangleGate gating:id="G{i}">{d}</gating:RectangleGate>'
              for i, d in enumerate(dims)]
    return "\n".join(gates)


def test_channel_check_accepts_every_real_fcs_and_gates_file(shared_data, project_root,
                                                            tmp_path):
    """The rule for an input check: every real file of its kind in ../shared/data passes."""
    from blood.flow.pipeline import check_gate_channels

    files = sorted((shared_data / "flow").rglob("*.fcs"))
    assert len(files) >= 8
    for path in files:
        fcs = read_fcs(path)
        xml = _write_gml(tmp_path / f"{path.stem}.xml", _every_channel_gates(fcs))
        check_gate_channels(load_gating(xml), fcs.channels, path)
    # the real gates files with the FCS files they were drawn for
    folder = shared_data / FLOWSOM
    for gates, fcs_path in [(folder / "gating.wsp", folder / "68983.fcs"),
                            (project_root / "configs/gates/tcell_100715.yaml",
                             shared_data / "flow" / TCELL)]:
        fcs = read_fcs(fcs_path)
        check_gate_channels(load_gating(gates, fcs_path=fcs_path), fcs.channels, fcs_path)


@pytest.mark.parametrize(("edit", "message"), [
    # a detector of the matrix absent from the file
    (lambda x: x.replace('data-type:name="G610-A"', 'data-type:name="FL3-H"'),
     r"compensation matrix 'Spill' is computed from detectors the file does not have: FL3-H"),
    # a compensated dimension that is neither a fluorochrome nor a channel
    (lambda x: x.replace('data-type:name="BV786"/></gating:dimension>',
                         'data-type:name="BV785"/></gating:dimension>', 1),
     r"gate 'CD8' uses channel 'BV785', which the file does not have; use one of its "
     r"channels \(\$PnN\): FSC-A, .*G560-A; or a fluorochrome of compensation matrix "
     r"'Spill': APC-Cy7, BV786"),
    # fluorochromes exist only in compensated data
    (lambda x: x.replace('compensation-ref="Spill" gating:transformation-ref="Logicle" '
                         'gating:max="0.6"', 'compensation-ref="uncompensated" '
                         'gating:transformation-ref="Logicle" gating:max="0.6"'),
     r"gate 'Live' uses channel 'BV421', which the file does not have; use one of its "
     r"channels \(\$PnN\): FSC-A, .*G560-A$"),
    (lambda x: x.replace(_fcs_dimensions(["FSC-H", "FSC-A"]),
                         _fcs_dimensions(["FSC-W", "FSC-A"])),
     r"gate 'Singlets' uses channel 'FSC-W' \(in ratio transform 'HtoA'\), which the file "
     r"does not have"),
    (lambda x: x.replace('gating:compensation-ref="Spill" gating:transformation-ref="Logicle"'
                         ' gating:min="0.3"', 'gating:compensation-ref="Spil" '
                         'gating:transformation-ref="Logicle" gating:min="0.3"'),
     r"gate 'CD3' is compensated by matrix 'Spil', which the gates file does not define"),
])
def test_a_really_missing_channel_is_still_refused_clearly(tcell, tmp_path, edit, message):
    body = _spectrum_gates(tcell)
    edited = edit(body)
    assert edited != body
    xml = _write_gml(tmp_path / "bad.xml", edited)
    with pytest.raises(BloodInputError) as caught:
        analyse_fcs(tcell.path, xml, tmp_path / "out", plots=False)
    text = str(caught.value)
    assert text.startswith(f"{tcell.path}: gates of {xml} do not fit this file: ")
    assert re.search(message, text), text
    assert not (tmp_path / "out" / "populations.csv").exists()


@pytest.mark.parametrize("name", [f[0] for f in FILES])
def test_every_file_spillover_is_read_or_refused_by_name(shared_data, name):
    """Every real FCS file's own spillover keyword gives a matrix, none, or (the Miltenyi
    file's $SPILLOVER: a count and detector names without coefficients) a clear error that
    names the file and the keyword, never FlowKit's bare reshape error."""
    fcs = read_fcs(shared_data / "flow" / name)
    if name.startswith("fcsparser/EY_"):
        with pytest.raises(BloodInputError, match=r"EY_2013.*\$SPILLOVER keyword holds no"):
            file_spillover(fcs.sample, source=fcs.path)
        return
    matrix = file_spillover(fcs.sample, source=fcs.path)
    assert matrix is None or set(matrix.detectors) <= set(fcs.channels)


def test_gates_on_a_malformed_file_spillover_name_the_keyword(shared_data, tmp_path):
    """Gates compensated by the file's own spillover, on the Miltenyi file whose keyword holds
    no matrix: `analyse_fcs` (what `hccbio blood flow` runs) names the file and the keyword."""
    gates = tmp_path / "gates.yaml"
    gates.write_text("compensation: file\ngates:\n  - id: fl2\n    type: rectangle\n"
                     "    dimensions:\n      - {channel: FL2-A, min: 0.0, compensated: true}\n")
    path = shared_data / "flow/fcsparser/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs"
    with pytest.raises(BloodInputError, match=r"EY_2013.*\$SPILLOVER keyword holds no"):
        analyse_fcs(path, gates, tmp_path / "out", plots=False)
    # the same gates without compensation run
    gates.write_text(gates.read_text().replace("compensation: file", "compensation: none")
                     .replace(", compensated: true", ""))
    table = analyse_fcs(path, gates, tmp_path / "out", plots=False).populations
    assert table.set_index("population").loc["fl2", "count"] > 0
