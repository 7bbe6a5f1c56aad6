"""A model manifest's JSON document, as the commands that write or add to it read and rewrite it.

Training writes the manifest; evaluation records its figures in it, `split-graph` and `atc --record`
their graphs, the calibrations their `uncertainty`. Each writes the document whole into a scratch
name beside the manifest (so its graph files resolve from there), lets the runtime accept that copy
where the change is one the station reads, then renames it over the manifest: a killed command, a
full disk or a calibration the runtime rejects leaves the old manifest, never half of a new one.
"""

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from isic_common.errors import ModelError
from isic_model.workers import scratch_file
from isic_station.manifest import Manifest, load_manifest


def read_manifest_doc(path: Path) -> Dict[str, Any]:
    """The manifest's JSON object (ModelError naming the file when it is missing or unreadable)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"model manifest {path} cannot be read: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelError(f"model manifest {path} is not a JSON object")
    return doc


def write_manifest_doc(path: Path, doc: Mapping[str, Any],
                       accept: Optional[Callable[[Manifest], Any]] = None) -> None:
    """Replace the manifest at `path` with `doc`, whole or not at all; with `accept`, only once it accepts
    the new manifest as the station loads it (it raises when not: schema or runtime errors)."""
    path = Path(path)
    with scratch_file(path.with_name(f".new-{path.name}")) as new:
        try:
            new.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:  # a full disk, a read-only folder: the old manifest stands
            raise ModelError(f"cannot write model manifest {path}: {exc.strerror or exc}; it is unchanged") from None
        if accept is not None:
            accept(load_manifest(new))
        new.replace(path)


@contextmanager
def editing_manifest(path: Path, accept: Optional[Callable[[Manifest], Any]] = None) -> Iterator[Dict[str, Any]]:
    """The manifest's document to change in the block, written back when the block ends without error."""
    doc = read_manifest_doc(path)
    yield doc
    write_manifest_doc(path, doc, accept)


def uncalibrated_copy(manifest_path: Path) -> Path:
    """The manifest without its `uncertainty` object, beside it (so its graph files resolve), for a calibration
    to answer the model uncalibrated: an earlier calibration in an older layout must not stop a new one. The
    manifest itself keeps its calibration until the new one replaces it. The caller removes the copy."""
    doc = read_manifest_doc(manifest_path)
    doc.pop("uncertainty", None)
    copy = Path(manifest_path).with_name(".uncalibrated-" + Path(manifest_path).name)
    try:
        copy.write_text(json.dumps(doc), encoding="utf-8")
    except OSError as exc:
        copy.unlink(missing_ok=True)
        raise ModelError(f"cannot write {copy} beside the model manifest: {exc.strerror or exc}") from None
    return copy
