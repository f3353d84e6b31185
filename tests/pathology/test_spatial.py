"""Spatial statistics on point patterns whose geometry is known (seeded)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pathology.spatial import (
    Window,
    fraction_within,
    getis_ord_gi_star,
    l_function,
    make_quadrats,
    morisita_horn,
    nearest_distances,
    ripley_k,
)

MPP = 8.0  # um per mask pixel, as the slide pipeline's tissue mask
RADII = (20.0, 50.0, 100.0)


def irregular_window(size_px: int = 250) -> Window:
    """An L-shaped tissue window with a round hole (a vessel): not convex, not a rectangle."""
    mask = np.ones((size_px, size_px), bool)
    mask[: size_px // 2, : size_px // 2] = False
    yy, xx = np.mgrid[:size_px, :size_px]
    mask[(yy - 0.75 * size_px) ** 2 + (xx - 0.7 * size_px) ** 2 < (0.1 * size_px) ** 2] = False
    return Window(mask, MPP)


def csr(window: Window, n: int, rng: np.random.Generator) -> np.ndarray:
    """Complete spatial randomness inside the window: uniform in pixels, then within a pixel."""
    pixels = np.flatnonzero(window.mask.ravel())
    chosen = rng.choice(pixels, n)
    rows, cols = np.divmod(chosen, window.mask.shape[1])
    return np.column_stack([(cols + rng.random(n)) * window.mpp,
                            (rows + rng.random(n)) * window.mpp])


def inside(window: Window, xy: np.ndarray) -> np.ndarray:
    return window.lookup(window.mask, xy) & (xy >= 0).all(1) & (
        xy[:, 0] < window.mask.shape[1] * window.mpp) & (xy[:, 1] < window.mask.shape[0] * MPP)


def test_csr_gives_l_close_to_r_in_an_irregular_window():
    rng = np.random.default_rng(1)
    window = irregular_window()
    points = csr(window, 20_000, rng)
    radii = (*RADII, 200.0)
    l_values = l_function(ripley_k(points, None, window=window, radii=radii))
    assert np.allclose(l_values, radii, rtol=0.005), l_values
    cross = l_function(ripley_k(points[:10_000], points[10_000:], window=window, radii=radii))
    assert np.allclose(cross, radii, rtol=0.005), cross


def test_edge_correction_is_what_makes_l_unbiased(monkeypatch):
    rng = np.random.default_rng(1)
    window = irregular_window()
    points = csr(window, 20_000, rng)
    monkeypatch.setattr(Window, "disk_fraction", lambda self, r: np.ones(self.mask.shape))
    uncorrected = l_function(ripley_k(points, None, window=window, radii=(200.0,)))
    assert uncorrected[0] < 0.95 * 200  # the borders and the hole hide about 7% of pairs


def test_l_is_comparable_across_window_sizes():
    rng = np.random.default_rng(2)
    small, large = irregular_window(120), irregular_window(300)
    density = 0.002  # cells per um^2 (2000 per mm^2)
    l_small = l_function(ripley_k(csr(small, int(density * small.area_um2), rng), None,
                                  window=small, radii=RADII))
    l_large = l_function(ripley_k(csr(large, int(density * large.area_um2), rng), None,
                                  window=large, radii=RADII))
    assert np.all(np.abs(l_small - l_large) < 0.05 * np.asarray(RADII))


def test_clustered_pattern_has_l_above_r_and_regular_below():
    rng = np.random.default_rng(3)
    window = Window(np.ones((200, 200), bool), MPP)
    side = 200 * MPP
    parents = rng.uniform(0, side, (150, 2))
    children = parents[rng.integers(0, 150, 12_000)] + rng.normal(0, 15.0, (12_000, 2))
    children = children[inside(window, children)]
    l_clustered = l_function(ripley_k(children, None, window=window, radii=RADII))
    assert np.all(l_clustered - RADII > 10), l_clustered
    # regular: a jittered lattice with 20 um spacing (a hard core of about 16 um)
    grid = np.arange(10, side, 20.0)
    lattice = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2) + rng.uniform(-2, 2, (
        grid.size**2, 2))
    l_regular = l_function(ripley_k(lattice, None, window=window, radii=(10.0, 15.0)))
    assert np.all(l_regular < np.array([10.0, 15.0]) - 3), l_regular


def test_focal_subsample_is_unbiased():
    rng = np.random.default_rng(4)
    window = irregular_window()
    points = csr(window, 30_000, rng)
    full = ripley_k(points, None, window=window, radii=RADII, max_focal=10**9)
    sampled = ripley_k(points, None, window=window, radii=RADII, max_focal=5_000, seed=7)
    assert np.allclose(l_function(sampled), l_function(full), rtol=0.02)


def test_nearest_distances_and_fraction_within_match_brute_force():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(0, 500, (300, 2)), rng.uniform(0, 500, (200, 2))
    brute = cdist(a, b).min(axis=1)
    assert np.allclose(nearest_distances(a, b), brute)
    assert np.allclose(fraction_within(a, b, (20.0, 50.0)),
                       [(brute <= 20).mean(), (brute <= 50).mean()])


def test_morisita_horn_and_quadrats():
    window = Window(np.ones((50, 50), bool), MPP)  # 400 um square
    quadrats = make_quadrats(window, 100.0)
    assert quadrats.valid.shape == (4, 4) and quadrats.valid.all()
    rng = np.random.default_rng(6)
    left = rng.uniform([0, 0], [200, 400], (500, 2))
    right = rng.uniform([200, 0], [400, 400], (500, 2))
    mixed = rng.uniform(0, 400, (500, 2))
    assert quadrats.counts(left).sum() == 500
    assert morisita_horn(quadrats.counts(left), quadrats.counts(right)) == 0.0
    assert morisita_horn(quadrats.counts(left), quadrats.counts(mixed)) == pytest.approx(
        0.67, abs=0.1)  # half the quadrats shared: MH = 2 * (1/2) / (1 + 1/2)


def test_getis_ord_finds_the_planted_hotspot():
    rng = np.random.default_rng(7)
    values = rng.poisson(2.0, (30, 30)).astype(float)
    values[10:14, 20:24] += 12
    valid = np.ones_like(values, bool)
    valid[:, :3] = False
    z = getis_ord_gi_star(values, valid, radius_cells=2)
    hot = z > 1.96
    assert hot[10:14, 20:24].all()
    assert hot.sum() < 60  # the hotspot and its immediate rim, not the slide
    assert np.isnan(z[:, :3]).all()
