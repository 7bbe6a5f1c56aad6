"""The virtual textile lab: fabric samples -> NIR reflectance, raw spectrometer counts, microscope frames.

No textile NIR data set or hardware can be reached from our machines, so the model is trained and
every figure is measured through this physics simulator (band tables in docs/notes/nir-textiles.md).
The fibre set (`fibres.json`) and the nuisance presets (`presets.json`) are data.
"""

from isic_drivers.lab.fibres import Fibre, FibreSet, LabConfigError, load_fibres
from isic_drivers.lab.instrument import InstrumentModel, dark_counts, raw_counts, white_counts
from isic_drivers.lab.measurement import Measurement, MeasurementTruth, scan_counts, simulate_measurement
from isic_drivers.lab.microscope import FrameTruth, render_frame
from isic_drivers.lab.sample import (
    PRESETS,
    Nuisance,
    Sample,
    blend_classes,
    blend_label,
    composition_vector,
    draw_sample,
)
from isic_drivers.lab.spectra import absorbance, reflectance
from isic_drivers.lab.stage import ProductionLine, ReferenceTile, SampleStage

LAB_VERSION = "1"

__all__ = [
    "LAB_VERSION", "PRESETS", "Fibre", "FibreSet", "FrameTruth", "InstrumentModel", "LabConfigError",
    "Measurement", "MeasurementTruth", "Nuisance", "ProductionLine", "ReferenceTile", "Sample", "SampleStage",
    "absorbance", "blend_classes", "blend_label", "composition_vector", "dark_counts", "draw_sample",
    "load_fibres", "raw_counts", "reflectance", "render_frame", "scan_counts", "simulate_measurement",
    "white_counts",
]
