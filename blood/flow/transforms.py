"""Display transforms (logicle, arcsinh, linear, log) built from plain parameters via FlowKit."""

from __future__ import annotations

from typing import Literal

from flowkit import transforms
from pydantic import BaseModel, ConfigDict, Field


class TransformSpec(BaseModel):
    """One named transform of a gates file or the flow config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["logicle", "asinh", "linear", "log"] = Field(
        description="logicle (Parks 2006), asinh (Gating-ML fasinh), linear or log.")
    t: float = Field(262144.0, gt=0, description="Top of scale (the instrument's maximum).")
    w: float = Field(0.5, ge=0, description="logicle: linearisation width in decades.")
    m: float = Field(4.5, gt=0, description="logicle / asinh / log: decades of the display.")
    a: float = Field(0.0, ge=0, description="logicle / asinh: extra negative decades; "
                     "linear: bottom of scale.")




def make_transform(spec: TransformSpec) -> transforms.Transform:
    """Build the FlowKit transform for a spec.

    Examples
    --------
    >>> xf = make_transform(TransformSpec(type="logicle"))
    >>> import numpy as np
    >>> round(float(xf.apply(np.array([[0.0]]))[0, 0]), 4)
    0.1111
    """
    if spec.type == "logicle":
        return transforms.LogicleTransform(param_t=spec.t, param_w=spec.w, param_m=spec.m,
                                           param_a=spec.a)
    if spec.type == "asinh":
        return transforms.AsinhTransform(param_t=spec.t, param_m=spec.m, param_a=spec.a)
    if spec.type == "log":
        return transforms.LogTransform(param_t=spec.t, param_m=spec.m)
    return transforms.LinearTransform(param_t=spec.t, param_a=spec.a)
