"""Hardware I/O and its stand-ins: OBP spectrometer over serial, microscope camera source,
device emulators and the virtual textile lab they (and the training data) draw from.

Runs on the board (Python 3.8+, numpy/OpenCV/pyserial only).
"""
