"""Device emulators: an OBP spectrometer on a pseudo-terminal and a virtual microscope, both showing
the virtual lab's current sample, so the station runs end to end with no hardware."""
