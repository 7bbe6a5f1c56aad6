"""Backends keyed by type, chosen in config (`acl`, `onnxruntime`, `auto`), as Frigate keys its detectors.

Each backend class carries its `kind`; adding one is a class, a line in `BACKENDS` and its name in the config
schema's `model.backend` enum (a test checks the two agree). Neither
backend imports its runtime at module level, so this registry imports on any board, and a missing
runtime becomes BackendUnavailable when that backend is created.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from isic_common.errors import BackendUnavailable, ConfigError
from isic_station.inference.acl_backend import AclBackend, acl_importable
from isic_station.inference.base import Backend
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.manifest import Manifest

log = logging.getLogger(__name__)

AUTO = "auto"
BACKENDS: Dict[str, Type[Backend]] = {cls.kind: cls for cls in (AclBackend, OnnxRuntimeBackend)}
KINDS = (AUTO,) + tuple(BACKENDS)
# Every option any backend reads; `auto` passes the same options to whichever it picks.
OPTION_KEYS = ("threads", "device_id")


def graphs_without_om(manifest: Manifest) -> List[str]:
    """The graphs whose .om the manifest does not name, or whose named .om file does not exist."""
    return [g.key for g in manifest.graphs.values() if g.om_path is None or not g.om_path.is_file()]


def om_files_present(manifest: Manifest) -> bool:
    """True when every graph of the manifest names an .om file and that file exists."""
    return not graphs_without_om(manifest)


def _auto_choice(manifest: Manifest) -> Tuple[str, Optional[str]]:
    """What `auto` runs here, and why it is not the NPU (None when it is)."""
    missing = graphs_without_om(manifest)
    if missing:
        return OnnxRuntimeBackend.kind, (
            f"no compiled .om recorded for graph(s) {', '.join(missing)} in {manifest.path} "
            "(compile with `isic-model build-om --record`)")
    if not acl_importable():
        return OnnxRuntimeBackend.kind, "pyACL (CANN's acl module) does not import (is cann.env in place?)"
    return AclBackend.kind, None


def resolve_kind(kind: str, manifest: Manifest) -> str:
    """The concrete backend for `kind`: `auto` is `acl` when the .om files exist and pyACL imports."""
    if kind not in KINDS:
        raise ConfigError(f"inference backend '{kind}' is unknown: expected one of {list(KINDS)}")
    return _auto_choice(manifest)[0] if kind == AUTO else kind


def _fall_back(manifest: Manifest, options: Mapping[str, Any], reason: str) -> Backend:
    """ONNX Runtime in place of the NPU, with `reason` on the backend (for STATUS=) and in the log."""
    log.warning("inference backend auto: running on ONNX Runtime (CPU), not the NPU: %s", reason)
    backend = OnnxRuntimeBackend(manifest, options)
    try:
        backend.load()
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"not the NPU ({reason}), and no CPU fallback: {exc}") from None
    backend.fallback_reason = reason
    return backend


def create_backend(kind: str, manifest: Manifest, options: Optional[Mapping[str, Any]] = None) -> Backend:
    """A loaded backend of `kind` for `manifest`; `options` may hold `threads` and `device_id`.

    With `auto`, a missing .om, a pyACL that does not import or an NPU that fails to start
    (BackendUnavailable, including AclError) is logged as a warning and the CPU takes over, with
    the reason in the backend's `fallback_reason` (the station shows it in STATUS=): a station that
    measures slowly beats one that does not measure.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown inference option(s) {unknown}: expected some of {list(OPTION_KEYS)}")
    if kind == AUTO:
        chosen, reason = _auto_choice(manifest)
        if reason is not None:
            return _fall_back(manifest, options, reason)
    else:
        chosen = resolve_kind(kind, manifest)
    backend = BACKENDS[chosen](manifest, options)
    try:
        backend.load()
    except BackendUnavailable as exc:
        backend.close()
        if kind != AUTO:
            raise
        backend = _fall_back(manifest, options, f"the NPU did not start: {exc}")
    except BaseException:
        backend.close()
        raise
    log.info("inference backend: %s (asked for %s)", backend.name, kind)
    return backend
