"""The virtual textile lab: fabric samples -> NIR reflectance, raw spectrometer counts, microscope frames.

No textile NIR data set or hardware can be reached from our machines, so the model is trained and
every figure is measured through this physics simulator (band tables in ../shared/notes/nir-textiles.md).
"""
