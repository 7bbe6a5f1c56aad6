"""Camera source, virtual microscope, quality gate, labels and model image input."""
