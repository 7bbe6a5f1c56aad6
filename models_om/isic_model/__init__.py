"""ISiC-Net: definition, training, evaluation against chemometric baselines, ONNX export, ATC.

Training needs the `train` extra (torch, scikit-learn); importing this package does not.
The shipped model and its manifest live in `shipped/` and are read by the station's runtime.
"""

from pathlib import Path

__version__ = "0.1.0"

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"
