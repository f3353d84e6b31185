"""Registration of serial sections: each slide of a block mapped onto its reference (H&E).

Low resolution, stain-independent views (:mod:`.images`), SimpleITK rigid / affine / B-spline
alignment with an orientation search (:mod:`.align`), checks that flag a poor fit
(:mod:`.quality`), the transform and its JSON form (:mod:`.transform`), the stored record and
point mapping (:mod:`.record`), the QC figure (:mod:`.overlay`). See docs/registration.md.
"""

from pathology.registration.images import RegistrationInputError
from pathology.registration.record import (
    REGISTRATION_FILE,
    Registration,
    RegistrationRecord,
    map_points_csv,
    read_registration,
    register_images,
    write_registration,
)
from pathology.registration.transform import Transform

__all__ = ["REGISTRATION_FILE", "Registration", "RegistrationInputError",
           "RegistrationRecord", "Transform", "map_points_csv", "read_registration",
           "register_images", "write_registration"]
