"""4PL / 5PL fits against R drc's own documented results (independent reference values).

Data: drc's ``ryegrass`` (Inderjit, Streibig & Olofsdotter 2002, Physiologia Plantarum 114:
422-428): root length of perennial ryegrass against ferulic acid (mM), 24 points, six of them
at concentration 0. Typed in from drc's data set as printed in the drc vignette
(cran/drc inst/doc/drc.tex, data set ``FA``, first rows 7.58, 8, 8.328571, 7.25, 7.375) and in
full in the Rdatasets / Delicatessen copies (``delicatessen.data.load_inderjit``).

Reference values and where they are documented:

- ``drm(rootl ~ conc, data = ryegrass, fct = LL.4())``: b 2.98222, c 0.48141, d 7.79296,
  e 3.05795 (Ritz, Baty, Streibig & Gerhard 2015, "Dose-Response Analysis Using R", PLOS ONE
  10: e0146021, quoted with the R code in pzivich/Delicatessen tests/test_ee_doseresponse.py).
- model standard errors and residual variance: the drc vignette (drc 0.8-1, ``summary`` of
  the same LL.4 fit): SE b 0.46500, c 0.21221, d 0.18857, e 0.18574, residual variance
  0.2700108, RSS 5.4002 on 20 df. That drc version stopped at b = 2.98183 (1.3e-4 from the
  optimum), so its standard errors are compared at 2e-4 relative.
- ``coeftest(LL.4 fit, vcov = sandwich)``: SE c 0.12779, e 0.26741, b 0.47438, d 0.15311;
  ``LL.3()`` (lower limit 0): b 2.47033, e 3.26336, d 7.85543, sandwich SE 0.29238,
  0.26572, 0.15397; ``ED(LL.3 fit, c(5, 10, 50), interval = "delta", vcov = sandwich)``:
  0.99088, 1.34086, 3.26336, SE 0.12397, 0.13134, 0.26572 (Delicatessen's drc comparisons,
  R code quoted there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blood.elisa.curve import fit_logistic
from blood.elisa.quantify import quantify

CONC = np.repeat([0, 0.94, 1.88, 3.75, 7.5, 15, 30], [6, 3, 3, 3, 3, 3, 3])
ROOTL = np.array([7.58, 8, 8.328571429, 7.25, 7.375, 7.9625, 8.355555556, 6.914285714, 7.75,
                  6.871428571, 6.45, 5.922222222, 1.925, 2.885714286, 4.233333333, 1.1875,
                  0.857142857, 1.057142857, 0.6875, 0.525, 0.825, 0.25, 0.22, 0.44])
DRC_LL4 = {"b": 2.98222, "c": 0.48141, "d": 7.79296, "e": 3.05795}


def _drc_se(curve) -> dict[str, float]:
    return curve.drc_standard_errors()


def test_ll4_ryegrass_equals_drc_with_zero_concentration_standards():
    fit = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0)
    coef = fit.drc_coefficients()
    for name, value in DRC_LL4.items():
        assert coef[name] == pytest.approx(value, rel=1e-4), name
    assert fit.rss == pytest.approx(5.4002, rel=1e-4)
    assert fit.df_residual == 20
    assert fit.rss / fit.df_residual == pytest.approx(0.2700108, rel=1e-5)


def test_ll4_standard_errors_equal_drc_summary():
    se = _drc_se(fit_logistic(CONC, ROOTL, model="4pl", weight_power=0))
    for name, value in {"b": 0.46500, "c": 0.21221, "d": 0.18857, "e": 0.18574}.items():
        assert se[name] == pytest.approx(value, rel=2e-4), name


def test_ll4_sandwich_standard_errors_equal_drc_with_sandwich():
    fit = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0, covariance="sandwich")
    se = _drc_se(fit)
    for name, value in {"c": 0.12779, "e": 0.26741, "b": 0.47438, "d": 0.15311}.items():
        assert se[name] == pytest.approx(value, abs=1e-4 * 0.5 + 1e-5), name


def test_ll3_and_its_effective_doses_equal_drc_ed():
    fit = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0, fixed={"d": 0.0},
                       covariance="sandwich")
    coef = fit.drc_coefficients()
    for name, value in {"b": 2.47033, "e": 3.26336, "d": 7.85543}.items():
        assert coef[name] == pytest.approx(value, rel=1e-4), name
    assert coef["c"] == 0.0 and "d" not in fit.se  # fixed: no standard error
    for percent, value, se in ((5, 0.99088, 0.12397), (10, 1.34086, 0.13134),
                               (50, 3.26336, 0.26572)):
        ed = fit.effective_dose(percent)
        assert ed.estimate == pytest.approx(value, rel=1e-4)
        assert ed.se == pytest.approx(se, rel=1e-4)


def test_ed_delta_interval_is_drc_t_interval_and_ed50_is_e():
    fit = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0)
    ed50 = fit.effective_dose(50)
    assert ed50.estimate == pytest.approx(fit.c, rel=1e-12)
    assert ed50.se == pytest.approx(fit.se["c"], rel=1e-6)
    t = stats.t.ppf(0.975, 20)
    assert ed50.lower == pytest.approx(fit.c - t * fit.se["c"])
    assert ed50.upper == pytest.approx(fit.c + t * fit.se["c"])
    # drc's formula for LL.4: ED_p = e (p / (100 - p))^(1 / b)
    for p in (5, 10, 90):
        assert fit.effective_dose(p).estimate == pytest.approx(
            fit.c * (p / (100 - p)) ** (1 / fit.b), rel=1e-12)
    with pytest.raises(ValueError, match="0, 100"):
        fit.effective_dose(100)


def test_ll5_reduces_to_ll4_and_improves_rss():
    four = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0)
    five_fixed = fit_logistic(CONC, ROOTL, model="5pl", weight_power=0, fixed={"g": 1.0})
    for name in "abcd":
        assert getattr(five_fixed, name) == pytest.approx(getattr(four, name), rel=1e-6)
    five = fit_logistic(CONC, ROOTL, model="5pl", weight_power=0)
    assert five.rss <= four.rss
    assert set(five.se) == {"a", "b", "c", "d", "g"} and five.df_residual == 19


def test_drc_weights_multiply_residuals_inside_the_square():
    """drc (CRAN 3.0): minimise sum((w (y - f))^2). Weight sqrt(2) = the point given twice."""
    w = np.ones_like(ROOTL)
    w[7] = np.sqrt(2)
    weighted = fit_logistic(CONC, ROOTL, model="4pl", weights=w)
    doubled = fit_logistic(np.append(CONC, CONC[7]), np.append(ROOTL, ROOTL[7]), model="4pl",
                           weight_power=0)
    for name in "abcd":
        assert getattr(weighted, name) == pytest.approx(getattr(doubled, name), rel=1e-6)
    # weight_power = 2 is weights 1 / |y|
    power = fit_logistic(CONC, ROOTL, model="4pl", weight_power=2)
    explicit = fit_logistic(CONC, ROOTL, model="4pl", weights=1 / np.abs(ROOTL))
    assert power.c == pytest.approx(explicit.c, rel=1e-8)
    assert power.se["c"] == pytest.approx(explicit.se["c"], rel=1e-6)


def test_standard_errors_scale_invariant_and_response_shift_equivariant():
    fit = fit_logistic(CONC, ROOTL, model="4pl", weight_power=0)
    scaled = fit_logistic(CONC * 1000, ROOTL * 10, model="4pl", weight_power=0)
    assert scaled.c == pytest.approx(fit.c * 1000, rel=1e-6)
    assert scaled.se["c"] == pytest.approx(fit.se["c"] * 1000, rel=1e-5)
    assert scaled.se["a"] == pytest.approx(fit.se["a"] * 10, rel=1e-5)


def test_quantify_accepts_a_zero_standard():
    rows = []
    for i, (x, y) in enumerate(zip(CONC[::-1], ROOTL[::-1], strict=True)):
        rows.append((f"S{i}", "standard", "", x, 1.0, y))
    rows.append(("X1", "sample", "s1", np.nan, 1.0, 5.0))
    wells = pd.DataFrame(rows, columns=["well", "kind", "sample_id", "concentration",
                                        "dilution", "value"])
    result = quantify(wells, model="4pl", weight_power=0)
    levels = result.standards.set_index("concentration")
    assert levels.loc[0.0, "used"] and np.isnan(levels.loc[0.0, "recovery_pct"])
    assert result.lloq > 0


def test_increasing_curve_is_spelled_as_drc_spells_it():
    """Reflected data (10 - y): same fit, drc's b negative, its c/d the lower/upper limits."""
    fit = fit_logistic(CONC, 10 - ROOTL, model="4pl", weight_power=0)
    coef = fit.drc_coefficients()
    assert coef["b"] == pytest.approx(-DRC_LL4["b"], rel=1e-4)
    assert coef["c"] == pytest.approx(10 - DRC_LL4["d"], rel=1e-4)
    assert coef["d"] == pytest.approx(10 - DRC_LL4["c"], rel=1e-4)
    assert coef["e"] == pytest.approx(DRC_LL4["e"], rel=1e-4)
    assert fit.drc_standard_errors()["d"] == pytest.approx(0.21221, rel=2e-4)
