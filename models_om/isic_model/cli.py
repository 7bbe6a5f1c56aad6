"""`isic-model`: data, training, evaluation, export (the training extra; never on the board)."""

import sys
from typing import List, Optional

from isic_common.command_line import build_parser, run
from isic_model import __version__
from isic_model.workers import stop_workers_on_sigterm

# One module per concern; each registers its own sub-commands.
COMMAND_MODULES = (
    "isic_model.model_commands",
    "isic_model.lab_commands",
    "isic_model.counting_limit",
    "isic_model.calibrate_uncertainty",
    "isic_model.calibrate_confidence",
    "isic_model.lot_simulation",
    "isic_model.wavelength_figures",
)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `isic-model` console command."""
    stop_workers_on_sigterm()
    parser = build_parser(
        "isic-model",
        "ISiC-Net model work: generate virtual-lab data, train, evaluate against PLS/SVM, "
        "export to ONNX and .om.",
        __version__,
        COMMAND_MODULES,
    )
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
