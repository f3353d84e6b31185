"""The transform that maps a moving image onto a fixed one, in level-0 pixels and in JSON.

The mapping goes from the **moving** image to the **fixed** (reference) image, in physical
coordinates (um, or level-0 pixels for images without a pixel size)::

    q = A (p + u(p)) + b

``A``, ``b`` are the affine part; ``u`` is an optional cubic B-spline displacement field defined
over the moving image (ITK's ``BSplineTransform``, stored with its own parameters so SimpleITK
rebuilds it exactly). Level-0 pixels convert with each image's pixel size:
``p = x_moving * s_moving`` and ``x_fixed = q / s_fixed``.

This one direction serves everything the pipeline needs: points of the moving slide (cells,
landmarks, ``hccbio slides map-points``) go to the reference, and rasters of the reference
(regions, tissue) are resampled onto the moving slide's grid by looking each moving pixel up
in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


class TransformError(ValueError):
    """A stored transform cannot be read; the message names the problem."""


@dataclass(frozen=True)
class BSplineField:
    """A cubic B-spline displacement field (ITK ``BSplineTransform``, 2-D, order 3).

    Attributes
    ----------
    fixed_parameters
        ITK's fixed parameters: grid size (2), grid origin (2), grid spacing (2), grid
        direction (4), in physical units of the moving image.
    parameters
        Coefficients: all x displacements (row-major over the grid), then all y.
    """

    fixed_parameters: tuple[float, ...]
    parameters: tuple[float, ...]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Coefficient grid as (rows, columns)."""
        return int(self.fixed_parameters[1]), int(self.fixed_parameters[0])

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Displacement ``u(p)`` at physical points ``(n, 2)`` (x, y).

        Evaluated as ITK does, a sum of cubic B-spline basis functions over the coefficient
        grid (``scipy.ndimage.map_coordinates`` with ``order=3`` and no prefilter), vectorised;
        zero outside the grid's valid region (where ITK leaves points unchanged too).
        """
        fp = self.fixed_parameters
        rows, cols = self.grid_shape
        origin, spacing = np.asarray(fp[2:4]), np.asarray(fp[4:6])
        direction = np.asarray(fp[6:10]).reshape(2, 2)
        coefficients = np.asarray(self.parameters, dtype=np.float64).reshape(2, rows, cols)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        index = (points - origin) @ np.linalg.inv(direction).T / spacing  # continuous (x, y)
        coords = [index[:, 1], index[:, 0]]
        out = np.column_stack([ndi.map_coordinates(coefficients[k], coords, order=3,
                                                   prefilter=False, mode="nearest")
                               for k in range(2)])
        valid = np.all((index >= 1) & (index < np.array([cols, rows]) - 2), axis=1)
        out[~valid] = 0.0
        return out

    def to_sitk(self):
        """The SimpleITK ``BSplineTransform``."""
        import SimpleITK as sitk

        transform = sitk.BSplineTransform(2, 3)
        transform.SetFixedParameters([float(v) for v in self.fixed_parameters])
        transform.SetParameters([float(v) for v in self.parameters])
        return transform

    @classmethod
    def from_sitk(cls, transform) -> BSplineField:
        """Copy a SimpleITK ``BSplineTransform``."""
        return cls(tuple(float(v) for v in transform.GetFixedParameters()),
                   tuple(float(v) for v in transform.GetParameters()))


@dataclass(frozen=True)
class Transform:
    """Moving -> fixed mapping (see the module docstring).

    Attributes
    ----------
    matrix
        ``A``, 2 x 2, physical units.
    offset
        ``b``, physical units of the fixed image.
    moving_unit_per_px, fixed_unit_per_px
        Physical units per level-0 pixel of each image (its um/px, or 1 in pixel units).
    field
        The non-rigid displacement ``u`` (``None``: affine only).

    Examples
    --------
    >>> t = Transform(np.eye(2), np.array([10.0, 0.0]), 0.5, 0.5)
    >>> t.map_level0(np.array([[0.0, 0.0], [4.0, 2.0]])).tolist()
    [[20.0, 0.0], [24.0, 2.0]]
    """

    matrix: np.ndarray
    offset: np.ndarray
    moving_unit_per_px: float = 1.0
    fixed_unit_per_px: float = 1.0
    field: BSplineField | None = None

    def affine_only(self) -> Transform:
        """The same transform without its non-rigid part."""
        return Transform(self.matrix, self.offset, self.moving_unit_per_px,
                         self.fixed_unit_per_px)

    def map_physical(self, points: np.ndarray) -> np.ndarray:
        """Map physical points ``(n, 2)`` of the moving image to the fixed image."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if self.field is not None:
            points = points + self.field.displacement(points)
        return points @ np.asarray(self.matrix).T + np.asarray(self.offset)

    def map_level0(self, xy: np.ndarray) -> np.ndarray:
        """Map level-0 pixel positions ``(n, 2)`` (x, y) of the moving image to the fixed
        image's level-0 pixels."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return self.map_physical(xy * self.moving_unit_per_px) / self.fixed_unit_per_px

    def level0_matrix(self) -> np.ndarray:
        """The affine part as a 3 x 3 homogeneous matrix on level-0 pixels (moving -> fixed)."""
        out = np.eye(3)
        out[:2, :2] = np.asarray(self.matrix) * self.moving_unit_per_px / self.fixed_unit_per_px
        out[:2, 2] = np.asarray(self.offset) / self.fixed_unit_per_px
        return out

    def to_sitk(self):
        """The SimpleITK transform (physical moving -> physical fixed), for resampling."""
        import SimpleITK as sitk

        affine = sitk.AffineTransform(2)
        affine.SetMatrix([float(v) for v in np.asarray(self.matrix).ravel()])
        affine.SetTranslation([float(v) for v in self.offset])
        if self.field is None:
            return affine
        return sitk.CompositeTransform([affine, self.field.to_sitk()])  # affine(field(p))

    def resample(self, raster: np.ndarray, *, spacing: float | tuple[float, float],
                 shape: tuple[int, int], target_spacing: float | tuple[float, float],
                 nearest: bool = True) -> np.ndarray:
        """Resample a raster of the fixed image onto a grid of the moving image.

        Each target pixel looks up, through the transform, where its centre falls in the
        fixed image (so labels such as region codes stay labels with ``nearest``).

        Parameters
        ----------
        raster
            ``(h, w)`` array on a grid of the fixed image whose pixel ``(r, c)`` covers
            ``[c * sx, (c + 1) * sx) x [r * sy, (r + 1) * sy)`` physical units.
        spacing
            ``sx, sy`` of ``raster`` (physical units of the fixed image per pixel).
        shape
            Target ``(h, w)``.
        target_spacing
            Physical units of the moving image per target pixel.
        nearest
            Nearest-neighbour (labels) or linear interpolation.

        Returns
        -------
        numpy.ndarray
            ``shape``, the dtype of ``raster``; 0 where the target maps outside the raster.

        Examples
        --------
        >>> t = Transform(np.eye(2), np.array([2.0, 0.0]))
        >>> t.resample(np.arange(6).reshape(1, 6), spacing=1, shape=(1, 3),
        ...            target_spacing=1).tolist()
        [[2, 3, 4]]
        """
        import SimpleITK as sitk

        sx, sy = (spacing, spacing) if np.isscalar(spacing) else spacing
        tx, ty = ((target_spacing, target_spacing) if np.isscalar(target_spacing)
                  else target_spacing)
        source = np.asarray(raster)
        cast = source.dtype == bool
        image = sitk.GetImageFromArray(source.astype(np.uint8) if cast else source)
        image.SetSpacing((float(sx), float(sy)))
        image.SetOrigin((0.5 * float(sx), 0.5 * float(sy)))
        reference = sitk.Image(int(shape[1]), int(shape[0]), sitk.sitkUInt8)
        reference.SetSpacing((float(tx), float(ty)))
        reference.SetOrigin((0.5 * float(tx), 0.5 * float(ty)))
        out = sitk.Resample(image, reference, self.to_sitk(),
                            sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0,
                            image.GetPixelID())
        array = sitk.GetArrayFromImage(out)
        return array.astype(bool) if cast else array

    def singular_values(self) -> tuple[float, float]:
        """Singular values of ``A`` (scale along its principal axes), largest first."""
        values = np.linalg.svd(np.asarray(self.matrix), compute_uv=False)
        return float(values[0]), float(values[1])

    def is_flipped(self) -> bool:
        """Whether the mapping mirrors the section (a negative determinant)."""
        return bool(np.linalg.det(np.asarray(self.matrix)) < 0)

    def rotation_deg(self) -> float:
        """Rotation angle of ``A`` (after removing a flip about the x axis), in degrees."""
        a = np.asarray(self.matrix, dtype=np.float64)
        if self.is_flipped():
            a = a @ np.diag([1.0, -1.0])
        return float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))

    def to_json(self) -> dict:
        """JSON form (see docs/registration.md)."""
        return {
            "direction": "moving level-0 px -> fixed level-0 px",
            "level0_affine": self.level0_matrix().tolist(),
            "physical": {"matrix": np.asarray(self.matrix).tolist(),
                         "offset": np.asarray(self.offset).tolist(),
                         "moving_unit_per_px": self.moving_unit_per_px,
                         "fixed_unit_per_px": self.fixed_unit_per_px},
            "nonrigid": None if self.field is None else {
                "type": "itk_bspline", "order": 3,
                "fixed_parameters": list(self.field.fixed_parameters),
                "parameters": list(self.field.parameters)},
        }

    @classmethod
    def from_json(cls, record: dict) -> Transform:
        """Rebuild from :meth:`to_json`'s form.

        Raises
        ------
        TransformError
            Missing or malformed keys.
        """
        try:
            physical = record["physical"]
            matrix = np.asarray(physical["matrix"], dtype=np.float64)
            offset = np.asarray(physical["offset"], dtype=np.float64)
            if matrix.shape != (2, 2) or offset.shape != (2,):
                raise TransformError(f"'physical' matrix must be 2 x 2 and offset 2 values, "
                                     f"found {matrix.shape} and {offset.shape}")
            field = None
            nonrigid = record.get("nonrigid")
            if nonrigid:
                if nonrigid.get("type") != "itk_bspline" or nonrigid.get("order") != 3:
                    raise TransformError(f"unsupported non-rigid transform {nonrigid.get('type')!r}"
                                         " (expected itk_bspline of order 3)")
                field = BSplineField(tuple(float(v) for v in nonrigid["fixed_parameters"]),
                                     tuple(float(v) for v in nonrigid["parameters"]))
                rows, cols = field.grid_shape
                if len(field.fixed_parameters) != 10 or len(field.parameters) != 2 * rows * cols:
                    raise TransformError("non-rigid parameters do not match their grid size")
            return cls(matrix, offset, float(physical["moving_unit_per_px"]),
                       float(physical["fixed_unit_per_px"]), field)
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, TransformError):
                raise
            raise TransformError(f"malformed transform ({type(error).__name__}: {error})"
                                 ) from error
