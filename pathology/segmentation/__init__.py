"""Nuclei from pixels: the tile grid (:mod:`.tiles`), StarDist nuclei (:mod:`.nuclei`) and the
network backends that run it (:mod:`.backends`: TensorFlow, OpenVINO), whole cells grown from
the nuclei (:mod:`.wholecell`), the classical watershed baseline (:mod:`.watershed`) and stain
vectors for colour deconvolution (:mod:`.stains`)."""
