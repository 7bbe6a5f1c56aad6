"""Backends keyed by type, chosen in config (`acl`, `onnxruntime`, `auto`), as Frigate keys its detectors.

Each backend class carries its `kind`; adding one is a class and a line in `BACKENDS`. Neither
backend imports its runtime at module level, so this registry imports on any board, and a missing
runtime becomes BackendUnavailable when that backend is created.
"""

import logging
from typing import Any, Dict, Mapping, Optional, Type

from isic_station.errors import BackendUnavailable, ConfigError
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


def om_files_present(manifest: Manifest) -> bool:
    """True when every graph of the manifest names an .om file and that file exists."""
    return all(g.om_path is not None and g.om_path.is_file() for g in manifest.graphs.values())


def resolve_kind(kind: str, manifest: Manifest) -> str:
    """The concrete backend for `kind`: `auto` is `acl` when pyACL imports and the .om files exist."""
    if kind not in KINDS:
        raise ConfigError(f"inference backend '{kind}' is unknown: expected one of {list(KINDS)}")
    if kind != AUTO:
        return kind
    if not acl_importable():
        log.info("inference backend auto: pyACL (acl) does not import, using ONNX Runtime")
        return OnnxRuntimeBackend.kind
    if not om_files_present(manifest):
        log.info("inference backend auto: pyACL imports but the manifest's .om files are missing, "
                 "using ONNX Runtime")
        return OnnxRuntimeBackend.kind
    return AclBackend.kind


def create_backend(kind: str, manifest: Manifest, options: Optional[Mapping[str, Any]] = None) -> Backend:
    """A loaded backend of `kind` for `manifest`; `options` may hold `threads` and `device_id`.

    With `auto`, an NPU that fails to start (BackendUnavailable, including AclError) is logged and
    the CPU takes over: a station that measures slowly beats one that does not measure.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown inference option(s) {unknown}: expected some of {list(OPTION_KEYS)}")
    chosen = resolve_kind(kind, manifest)
    backend = BACKENDS[chosen](manifest, options)
    try:
        backend.load()
    except BackendUnavailable as exc:
        backend.close()
        if kind != AUTO or chosen == OnnxRuntimeBackend.kind:
            raise
        log.warning("inference backend auto: %s could not start (%s); falling back to ONNX Runtime", chosen, exc)
        backend = OnnxRuntimeBackend(manifest, options)
        backend.load()
    except BaseException:
        backend.close()
        raise
    log.info("inference backend: %s (asked for %s)", backend.name, kind)
    return backend
