"""Compile the shipped ONNX graphs to Ascend .om files with ATC (CANN's model converter).

The flags follow CANN's ATC parameter pages (hiascend.com "atlasatcparam_16_*", CANN 7.0-8.5):
`--framework=5` (ONNX), `--input_shape` with the ONNX input names and the manifest's static shapes,
`--soc_version` (Ascend310 for the Atlas 200 DK, Ascend310B1/B4 for the Atlas 200I DK A2),
`--precision_mode`, `--output_type=FP32` (the graph outputs stay float32 whatever the precision
mode does inside), and `--input_format=ND` because the bimodal graph mixes a 2-D spectrum with a
4-D image (NCHW would be applied to every input). `--output` takes the name without `.om`; ATC
writes `<name>.om` or `<name>_<os>_<arch>.om` (the --output page), so `--record` looks for both.
On the board itself ATC gets TE_PARALLEL_COMPILER=1 MAX_COMPILE_CORE_NUMBER=1 to fit in memory.
ATC only exists on a CANN host; elsewhere `AtcUnavailable` says so in one line.
"""

import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from isic_common.errors import EX_UNAVAILABLE, ModelError, StationError
from isic_model.manifest_doc import editing_manifest
from isic_station.manifest import GraphSpec, Manifest

log = logging.getLogger(__name__)

SOC_VERSIONS = ("Ascend310", "Ascend310B1", "Ascend310B4")
PRECISION_MODES = ("allow_fp32_to_fp16", "allow_mix_precision", "force_fp16", "must_keep_origin_dtype")
# must_keep_origin_dtype keeps float32 everywhere, and the Ascend 310's cube unit (MatMul, the
# transformer's every projection) computes float16 only: ATC refuses such a graph for it
# (--precision_mode page: an operator without a float32 implementation fails the build).
FP16_ONLY_SOCS = ("Ascend310",)
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
    if precision_mode == "must_keep_origin_dtype" and soc_version in FP16_ONLY_SOCS:
        raise ModelError(f"--precision-mode must_keep_origin_dtype cannot build for {soc_version}: its MatMul "
                         "computes float16 only; use allow_fp32_to_fp16 (the default) or allow_mix_precision")
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
        "--output_type=FP32",
        "--log=error",
    ]


def written_om(out_dir: Path, stem: str) -> Path:
    """The .om ATC wrote for `stem`: `<stem>.om`, or `<stem>_<os>_<arch>.om` on releases that add them."""
    found = [out_dir / f"{stem}.om"] if (out_dir / f"{stem}.om").is_file() else []
    found += sorted(p for p in out_dir.glob(f"{stem}_*.om")
                    if p.is_file() and p.name.count("_") - stem.count("_") >= 2)
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise AtcFailed(f"ATC finished but the .om to record for {stem} is ambiguous or missing in {out_dir} "
                        f"(found {what}; expected {stem}.om or {stem}_<os>_<arch>.om)")
    return found[0]


def atc_environment(on_board: bool) -> Dict[str, str]:
    """The process environment for ATC: the board limits added when compiling on the board."""
    env = dict(os.environ)
    if on_board:
        env.update(BOARD_ENV)
    return env


def installed_copy(path: Path) -> bool:
    """True when `path` lies in an installed package (site-packages / dist-packages), not a checkout."""
    return any(part in ("site-packages", "dist-packages") for part in path.resolve().parts)


def check_recordable(manifest_path: Path) -> None:
    """ModelError unless `--record` may write `manifest_path` (a checkout's manifest, not the installed one)."""
    if installed_copy(manifest_path):
        raise ModelError(
            f"--record would write {manifest_path}, the installed package's copy, which the next install "
            "overwrites: run build-om from the repository checkout (its models_om/isic_model/shipped/manifest.json "
            "is found from the working folder) or pass --manifest with the checkout's manifest")


def checkout_manifest(start: Path) -> Optional[Path]:
    """models_om/isic_model/shipped/manifest.json of the checkout holding `start`, if any."""
    for folder in (start.resolve(), *start.resolve().parents):
        candidate = folder / "models_om" / "isic_model" / "shipped" / "manifest.json"
        if candidate.is_file():
            return candidate
    return None


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

    With `record` and a single SoC, the manifest's graphs get the names of the .om files ATC wrote;
    a manifest inside an installed package is refused (the next install would overwrite it).
    """
    if record:
        check_recordable(manifest.path)
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
        with editing_manifest(manifest.path) as doc:
            for key, graph in manifest.graphs.items():
                om = written_om(out_dir, om_stem(graph, soc_versions[0]))
                doc["graphs"][key]["om"] = os.path.relpath(om, manifest.path.parent)
    return commands
