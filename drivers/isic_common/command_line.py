"""Shared machinery of the two console commands (`isic-station`, `isic-model`).

Each module named in a command's module list owns its sub-commands through
`register(subparsers)` and keeps heavy imports (cv2, torch, onnxruntime) inside its handlers,
so `--help` is instant and a missing extra becomes a clear error, not an import traceback.
Handlers take the parsed arguments and return an exit code.
"""

import argparse
import importlib
import logging
import sys
from typing import Iterable, List, Optional

from isic_common.errors import StationError


def build_parser(
    prog: str, description: str, version: str, modules: Iterable[str]
) -> argparse.ArgumentParser:
    """The whole command tree, assembled from the modules that own each sub-command."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """Run one sub-command; a StationError becomes one line on stderr and its exit code."""
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StationError as exc:
        logging.getLogger(parser.prog).debug("failed", exc_info=True)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
