"""Tissue and its regions: the tissue mask of a slide (:mod:`.detect`) and the tumour / margin
/ stroma regions drawn on it (:mod:`.regions`)."""
