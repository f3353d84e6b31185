"""Slide QC: artefact and stain metrics with flags, overlays, QuPath GeoJSON, summary."""
