"""The microscope camera: one source type for devices, files, folders, streams and the virtual microscope."""

from isic_drivers.camera.readers import EndOfStream, FrameReader
from isic_drivers.camera.source import CameraSource, Frame, source_kind
from isic_drivers.camera.stats import CameraStats

__all__ = ["CameraSource", "CameraStats", "EndOfStream", "Frame", "FrameReader", "source_kind"]
