"""Ocean Binary Protocol (OBP) over a serial line: the frame codec, the stream scanner that
resynchronises on a noisy line, the pyserial transport that survives a pulled cable, and the
spectrometer driver on top (see docs/notes/spectrometer-protocols.md for the wire format)."""
