"""Gate hierarchies from Gating-ML 2.0, FlowJo workspaces (.wsp) or our YAML format.

Each source becomes one FlowKit ``GatingStrategy`` with its own compensation and transform
references, so gates drawn on compensated, transformed channels are applied exactly as the
gating file says. YAML format (see docs/blood.md)::

    compensation: file            # file ($SPILLOVER keyword) | none | path/to/spill.csv
    transforms:
      logicle: {type: logicle, t: 262144, w: 0.5, m: 4.5, a: 0}
    gates:
      - {id: lymphocytes, type: rectangle,
         dimensions: [{channel: FSC-A, min: 25000, max: 120000}]}
      - {id: cd3, parent: lymphocytes, type: rectangle,
         dimensions: [{channel: R780-A, min: 0.3, compensated: true, transform: logicle}]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.etree.ElementTree import iterparse

import flowkit as fk
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from blood.errors import BloodInputError
from blood.flow.compensate import read_matrix
from blood.flow.transforms import TransformSpec, make_transform

ROOT = "root"
CUSTOM_MATRIX_ID = "supplied"
GateSource = Literal["gatingml", "wsp", "yaml"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DimensionSpec(_Strict):
    """One axis of a gate."""

    channel: str = Field(description="Channel name ($PnN), e.g. 'R780-A'.")
    min: float | None = Field(None, description="Rectangle: lower bound (open if null).")
    max: float | None = Field(None, description="Rectangle: upper bound (open if null).")
    at: float | None = Field(None, description="Quadrant: divider position.")
    compensated: bool = Field(False, description="Gate drawn on compensated values.")
    transform: str | None = Field(None, description="Id of a transform in 'transforms'; "
                                  "null = raw scale.")


class GateSpec(_Strict):
    """One gate of the YAML hierarchy."""

    id: str = Field(description="Unique population name (also the populations.csv row).")
    type: Literal["rectangle", "polygon", "quadrant", "boolean"] = Field(
        description="Gate shape.")
    parent: str = Field(ROOT, description="Parent population id ('root' = all events).")
    dimensions: list[DimensionSpec] = Field(default_factory=list, description="rectangle: "
                                            "one or two axes with min/max.")
    x: DimensionSpec | None = Field(None, description="polygon / quadrant: x axis.")
    y: DimensionSpec | None = Field(None, description="polygon / quadrant: y axis.")
    vertices: list[tuple[float, float]] = Field(default_factory=list, description="polygon: "
                                                "(x, y) vertices, at least three.")
    quadrants: dict[str, Literal["++", "+-", "-+", "--"]] = Field(
        default_factory=dict, description="quadrant: population id -> sign of (x, y), "
        "e.g. {cd8: '+-'} means x above, y below the dividers.")
    op: Literal["and", "or", "not"] | None = Field(None, description="boolean: operator.")
    gates: list[str] = Field(default_factory=list, description="boolean: population ids "
                             "combined (one for 'not'); prefix '!' for the complement.")


class GatesFile(_Strict):
    """A YAML gates file."""

    compensation: str = Field("file", description="'file' (the FCS $SPILLOVER keyword), "
                              "'none', or a spillover CSV path relative to the gates file.")
    transforms: dict[str, TransformSpec] = Field(default_factory=dict,
                                                 description="Named transforms.")
    gates: list[GateSpec] = Field(description="Gates, parents before children.")


@dataclass(frozen=True)
class Gating:
    """A gating strategy and where it came from.

    Attributes
    ----------
    strategy
        FlowKit gating strategy.
    source
        "gatingml", "wsp" or "yaml".
    path
        The gates file.
    workspace
        The parsed FlowJo workspace (wsp only): it holds per-sample gates and matrices.
    sample
        The workspace sample whose gates are used (wsp only).
    """

    strategy: fk.GatingStrategy
    source: GateSource
    path: Path
    workspace: fk.Workspace | None = None
    sample: str | None = None


def load_gating(path: str | Path, *, fcs_path: str | Path | None = None,
                wsp_sample: str | None = None) -> Gating:
    """Load gates from Gating-ML (.xml), a FlowJo workspace (.wsp) or YAML (.yaml/.yml).

    Parameters
    ----------
    path
        The gates file.
    fcs_path
        FlowJo workspaces hold gates per sample: the FCS file whose gates to take.
    wsp_sample
        FlowJo workspaces: the workspace sample whose gates apply to ``fcs_path``. By
        default, the sample named like the FCS file, else the workspace's only sample.

    Raises
    ------
    BloodInputError
        Unknown suffix, unreadable file, invalid YAML keys, unknown parents or transforms,
        a FlowJo workspace older than FlowJo 10, or no workspace sample for the FCS file.
    """
    path = Path(path)
    if not path.is_file():
        raise BloodInputError(f"{path}: gates file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".xml":
            return Gating(fk.parse_gating_xml(str(path)), "gatingml", path)
        if suffix == ".wsp":
            return _load_wsp(path, fcs_path, wsp_sample)
    except BloodInputError:
        raise
    except Exception as error:  # noqa: BLE001 - FlowKit raises many kinds on bad XML
        raise BloodInputError(f"{path}: cannot parse gates ({type(error).__name__}: {error})") \
            from error
    if suffix in (".yaml", ".yml"):
        return Gating(build_strategy(read_gates_yaml(path), base=path.parent), "yaml", path)
    if suffix == ".jo":
        raise BloodInputError(f"{path}: a FlowJo 9 (or older) .jo workspace cannot be read; "
                              f"{RESAVE}")
    raise BloodInputError(f"{path}: unknown gates format {suffix!r}; use Gating-ML .xml, "
                          "FlowJo .wsp or .yaml")


RESAVE = ("open it in FlowJo 10 (or later) and save it again (File > Save As ... .wsp), then "
          "use the new .wsp; or export its gates as Gating-ML 2.0 (.xml)")


def flowjo_version(path: str | Path) -> tuple[str, str]:
    """The FlowJo version a workspace was written by, from its root element.

    Returns
    -------
    tuple of str
        ``(flowJoVersion, version)``: the application version (e.g. '10.5.3'; '' when the
        workspace does not say, as FlowJo 7 - 9 do not) and the workspace format version
        (e.g. '20.0' for FlowJo 10; '2.0' FlowJo 8 / 9 for Mac; '1.6x' FlowJo 7 for PC).

    Raises
    ------
    BloodInputError
        Not XML, or the root element is not a FlowJo ``Workspace``.
    """
    path = Path(path)
    try:
        _, root = next(iterparse(path, events=("start",)))
    except Exception as error:  # noqa: BLE001 - ParseError, StopIteration, OSError
        raise BloodInputError(f"{path}: not a FlowJo workspace (not readable XML: "
                              f"{type(error).__name__}: {error})") from error
    if root.tag.rsplit("}", 1)[-1] != "Workspace":
        raise BloodInputError(f"{path}: not a FlowJo workspace (root element "
                              f"<{root.tag}>, expected <Workspace>)")
    return root.get("flowJoVersion", ""), root.get("version", "")


def _check_flowjo_10(path: Path) -> None:
    application, fmt = flowjo_version(path)
    major = re.match(r"\s*(\d+)", application)
    if major and int(major.group(1)) >= 10:
        return
    if application:
        written = f"FlowJo {application}"
    elif fmt.startswith("2."):
        written = f"FlowJo 8 / 9 for Mac (workspace version {fmt})"
    elif fmt.startswith("1."):
        written = f"FlowJo 7 for PC or an early FlowJo X (workspace version {fmt})"
    else:
        written = f"a FlowJo version that does not say which (workspace version {fmt!r})"
    raise BloodInputError(f"{path}: this workspace was written by {written}; hccbio reads "
                          f"FlowJo 10 workspaces: {RESAVE}")


def _load_wsp(path: Path, fcs_path: str | Path | None, wsp_sample: str | None) -> Gating:
    if fcs_path is None:
        raise BloodInputError(f"{path}: a FlowJo workspace needs the FCS file to pick its gates")
    _check_flowjo_10(path)
    # gates and matrices only: the FCS file is read by hccbio, whatever its name
    workspace = fk.Workspace(str(path), load_missing_file_data=True)
    names = sorted(workspace.get_sample_ids(loaded_only=False))
    file_name = Path(fcs_path).name
    if wsp_sample is not None:
        if wsp_sample not in names:
            raise BloodInputError(f"{path}: workspace has no sample {wsp_sample!r} "
                                  f"(its samples: {names})")
        sample = wsp_sample
    elif file_name in names:
        sample = file_name
    elif len(names) == 1:
        sample = names[0]  # the only sample: its gates apply, whatever the file is called
    else:
        raise BloodInputError(
            f"{path}: no workspace sample is named {file_name!r} (its samples: {names}); "
            "say which one holds the gates for this file: --sample NAME (hccbio blood flow) "
            "or flow.wsp_samples {sample_id: NAME} in the blood config")
    return Gating(workspace.get_gating_strategy(sample), "wsp", path, workspace, sample)


def read_gates_yaml(path: str | Path) -> GatesFile:
    """Parse and validate a YAML gates file.

    Raises
    ------
    BloodInputError
        YAML syntax errors and invalid keys, naming the file and the key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise BloodInputError(f"{path}: invalid YAML ({error})") from error
    try:
        return GatesFile.model_validate(data or {})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise BloodInputError(f"{path}: invalid gates file ({problems})") from error


def build_strategy(spec: GatesFile, *, base: Path = Path(".")) -> fk.GatingStrategy:
    """Turn a validated YAML gates file into a FlowKit gating strategy.

    Parameters
    ----------
    spec
        Parsed gates file.
    base
        Folder against which a relative spillover CSV path is resolved.

    Raises
    ------
    BloodInputError
        Duplicate ids, unknown parents, transforms or boolean operands, missing shape fields.
    """
    strategy = fk.GatingStrategy()
    comp_ref = "FCS"
    if spec.compensation == "none":
        comp_ref = "uncompensated"
    elif spec.compensation != "file":
        strategy.add_comp_matrix(CUSTOM_MATRIX_ID, read_matrix(base / spec.compensation))
        comp_ref = CUSTOM_MATRIX_ID
    for name, transform in spec.transforms.items():
        strategy.add_transform(name, make_transform(transform))
    paths: dict[str, tuple[str, ...]] = {ROOT: (ROOT,)}
    for gate in spec.gates:
        where = f"gate {gate.id!r}"
        if gate.id in paths:
            raise BloodInputError(f"{where}: duplicate population id")
        if gate.parent not in paths:
            raise BloodInputError(f"{where}: parent {gate.parent!r} is not defined above it")
        parent_path = paths[gate.parent]
        flowkit_gate = _make_gate(gate, spec, comp_ref, paths, where)
        strategy.add_gate(flowkit_gate, parent_path)
        if gate.type == "quadrant":
            for quadrant in gate.quadrants:
                if quadrant in paths:
                    raise BloodInputError(f"{where}: duplicate population id {quadrant!r}")
                # FlowKit addresses a quadrant's children through the quadrant gate's path
                paths[quadrant] = (*parent_path, gate.id, quadrant)
        else:
            paths[gate.id] = (*parent_path, gate.id)
    return strategy


def _dimension(dim: DimensionSpec, spec: GatesFile, comp_ref: str, where: str,
               *, divider: str | None = None) -> fk.Dimension | fk.QuadrantDivider:
    if dim.transform is not None and dim.transform not in spec.transforms:
        raise BloodInputError(f"{where}: transform {dim.transform!r} is not defined in "
                              f"'transforms' ({sorted(spec.transforms)})")
    comp = comp_ref if dim.compensated else "uncompensated"
    if divider is not None:
        if dim.at is None:
            raise BloodInputError(f"{where}: quadrant axis {dim.channel!r} needs 'at'")
        return fk.QuadrantDivider(divider, dim.channel, comp, [dim.at],
                                  transformation_ref=dim.transform)
    return fk.Dimension(dim.channel, compensation_ref=comp, transformation_ref=dim.transform,
                        range_min=dim.min, range_max=dim.max)


def _make_gate(gate: GateSpec, spec: GatesFile, comp_ref: str,
               paths: dict[str, tuple[str, ...]], where: str) -> fk.gates.Gate:
    if gate.type == "rectangle":
        if not 1 <= len(gate.dimensions) <= 2:
            raise BloodInputError(f"{where}: a rectangle needs one or two 'dimensions'")
        dims = [_dimension(d, spec, comp_ref, where) for d in gate.dimensions]
        if any(d.min is None and d.max is None for d in gate.dimensions):
            raise BloodInputError(f"{where}: every rectangle dimension needs min or max")
        return fk.gates.RectangleGate(gate.id, dims)
    if gate.type == "polygon":
        if gate.x is None or gate.y is None or len(gate.vertices) < 3:
            raise BloodInputError(f"{where}: a polygon needs 'x', 'y' and at least 3 vertices")
        dims = [_dimension(d, spec, comp_ref, where) for d in (gate.x, gate.y)]
        return fk.gates.PolygonGate(gate.id, dims, [list(v) for v in gate.vertices])
    if gate.type == "quadrant":
        if gate.x is None or gate.y is None or not gate.quadrants:
            raise BloodInputError(f"{where}: a quadrant gate needs 'x', 'y' (with 'at') and "
                                  "'quadrants'")
        dividers = [_dimension(gate.x, spec, comp_ref, where, divider=f"{gate.id}_x"),
                    _dimension(gate.y, spec, comp_ref, where, divider=f"{gate.id}_y")]
        quadrants = []
        for name, signs in gate.quadrants.items():
            ranges = [[gate.x.at, None] if signs[0] == "+" else [None, gate.x.at],
                      [gate.y.at, None] if signs[1] == "+" else [None, gate.y.at]]
            quadrants.append(fk.gates.Quadrant(name, [f"{gate.id}_x", f"{gate.id}_y"], ranges))
        return fk.gates.QuadrantGate(gate.id, dividers, quadrants)
    # boolean
    if gate.op is None or not gate.gates:
        raise BloodInputError(f"{where}: a boolean gate needs 'op' and 'gates'")
    if (gate.op == "not") != (len(gate.gates) == 1):
        raise BloodInputError(f"{where}: 'not' takes one gate, 'and'/'or' two or more")
    refs = []
    for operand in gate.gates:
        name = operand.lstrip("!")
        if name not in paths or name == ROOT:
            raise BloodInputError(f"{where}: boolean operand {name!r} is not defined above it")
        refs.append({"ref": name, "path": paths[name][:-1],
                     "complement": operand.startswith("!")})
    return fk.gates.BooleanGate(gate.id, gate.op, refs)
