"""Compile the shipped ONNX graphs to Ascend .om files with ATC (CANN's model converter).

The flags follow ../shared/notes/ascend.md: `--framework=5` (ONNX), `--input_shape` with the
ONNX input names and the manifest's static shapes, `--soc_version` (Ascend310 for the Atlas 200 DK,
Ascend310B1/B4 for the Atlas 200I DK A2), `--precision_mode`, and `--input_format=ND` because the
bimodal graph mixes a 2-D spectrum with a 4-D image (NCHW would be applied to every input).
On the board itself ATC gets TE_PARALLEL_COMPILER=1 MAX_COMPILE_CORE_NUMBER=1 to fit in memory.
ATC only exists on a CANN host; elsewhere `AtcUnavailable` says so in one line.
"""

import json
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

from isic_station.errors import EX_UNAVAILABLE, ModelError, StationError
from isic_station.manifest import GraphSpec, Manifest

log = logging.getLogger(__name__)

SOC_VERSIONS = ("Ascend310", "Ascend310B1", "Ascend310B4")
PRECISION_MODES = ("must_keep_origin_dtype", "allow_fp32_to_fp16", "allow_mix_precision", "force_fp16")
# ATC compiles with one process and one core on the board's 4-8 GB.
BOARD_ENV = {"TE_PARALLEL_COMPILER": "1", "MAX_COMPILE_CORE_NUMBER": "1"}


class AtcUnavailable(StationError):
    """The `atc` converter is not installed here (it comes with CANN's toolkit)."""

    exit_code = EX_UNAVAILABLE


class AtcFailed(StationError):
    """ATC ran and rejected a graph."""

    exit_code = EX_UNAVAILABLE


def om_stem(graph: GraphSpec, soc_version: str) -> str:
    """Output name without the .om suffix ATC adds: isicnet_Ascend310, isicnet_signal_Ascend310B4."""
    return f"{graph.onnx_path.stem}_{soc_version}"


def atc_command(
    graph: GraphSpec, soc_version: str, out_dir: Path, precision_mode: str = "allow_fp32_to_fp16", atc: str = "atc"
) -> List[str]:
    """The ATC argument list for one graph and one SoC."""
    if soc_version not in SOC_VERSIONS:
        raise ModelError(f"unknown --soc-version {soc_version!r}; expected one of {', '.join(SOC_VERSIONS)}")
    if precision_mode not in PRECISION_MODES:
        raise ModelError(f"unknown --precision-mode {precision_mode!r}; expected one of {', '.join(PRECISION_MODES)}")
    shapes = ";".join(f"{t.name}:{','.join(str(d) for d in t.shape)}" for t in graph.inputs)
    return [
        atc,
        f"--model={graph.onnx_path}",
        "--framework=5",
        f"--output={out_dir / om_stem(graph, soc_version)}",
        f"--soc_version={soc_version}",
        f"--input_shape={shapes}",
        "--input_format=ND",
        f"--precision_mode={precision_mode}",
        "--log=error",
    ]


def atc_environment(on_board: bool) -> Dict[str, str]:
    """The process environment for ATC: the board limits added when compiling on the board."""
    env = dict(os.environ)
    if on_board:
        env.update(BOARD_ENV)
    return env


def running_on_board() -> bool:
    """True on an aarch64 machine (the Atlas boards), where ATC must be kept to one core."""
    return platform.machine() in ("aarch64", "arm64")


def build_om(
    manifest: Manifest,
    soc_versions: Sequence[str],
    out_dir: Path,
    precision_mode: str,
    on_board: bool,
    dry_run: bool = False,
    record: bool = False,
) -> List[List[str]]:
    """Run ATC on every graph of the manifest for every SoC; returns the commands run (or to run).

    With `record` and a single SoC, the manifest's graphs get their `om` file names.
    """
    commands = [atc_command(g, soc, out_dir, precision_mode) for soc in soc_versions for g in manifest.graphs.values()]
    if dry_run:
        return commands
    atc = shutil.which("atc")
    if atc is None:
        raise AtcUnavailable(
            "ATC is not installed here (no `atc` on PATH): run build-om on a CANN host or the board after "
            "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`; `--dry-run` prints the commands"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    env = atc_environment(on_board)
    for cmd in commands:
        cmd[0] = atc
        log.info("running %s", " ".join(cmd))
        done = subprocess.run(cmd, env=env, check=False)
        if done.returncode != 0:
            raise AtcFailed(f"ATC exited with {done.returncode} for {cmd[1][len('--model=') :]} ({cmd[4]})")
    if record:
        if len(soc_versions) != 1:
            raise ModelError("--record needs exactly one --soc-version (the manifest names one .om per graph)")
        doc = json.loads(manifest.path.read_text(encoding="utf-8"))
        for key, graph in manifest.graphs.items():
            om = out_dir / (om_stem(graph, soc_versions[0]) + ".om")
            doc["graphs"][key]["om"] = os.path.relpath(om, manifest.path.parent)
        manifest.path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return commands
