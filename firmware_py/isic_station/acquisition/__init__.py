"""Acquisition: what the station measures with - the acquirer (spectrum and frames of one measurement),
the dark/white references and the wavelength check, the frame quality gate and the sample labels.

Runs on the board; knows the devices only through the interfaces in `acquirer` (`Spectrometer`, `Camera`).
"""
