"""The room temperature as a model input, shared by training, evaluation and both inference backends.

A room's temperature moves the water bands of the fabric against the fibres' own (about 0.4 nm/K);
the station reads it from the spectrometer's sensor. A model trained with it (`training.network.
use_temperature`) has a `temperature` input [B, 2] on its graphs: (room - reference_c) / scale_k and
1 when the sensor gave a reading, both 0 when it did not (a firmware without a sensor: the model was
trained for that too). The manifest's `temperature_input` holds reference_c and scale_k, so the
station scales exactly as training did.
"""

from typing import Dict, Mapping, Optional

import numpy as np

TEMPERATURE_FEATURES = 2
# What training scales the room with; the manifest records it, so the station reads it from there.
DEFAULT_TEMPERATURE_INPUT: Dict[str, float] = {"reference_c": 22.0, "scale_k": 20.0}


def temperature_input(temperature_c: Optional[float], params: Mapping[str, float]) -> np.ndarray:
    """float32 [2]: the scaled room and 1, or zeros when there is no reading (None or not finite)."""
    if temperature_c is None or not np.isfinite(temperature_c):
        return np.zeros(TEMPERATURE_FEATURES, np.float32)
    scaled = (float(temperature_c) - float(params["reference_c"])) / float(params["scale_k"])
    return np.array([scaled, 1.0], np.float32)
