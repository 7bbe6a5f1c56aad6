"""A command writing the model manifest (a calibration, an evaluation's figures) onto a full disk (a real tmpfs):
the old manifest stays whole, no scratch file is left, and the error names the file and the cause."""

import json
from pathlib import Path

import pytest

from isic_common.errors import ModelError
from isic_model.manifest_doc import read_manifest_doc, uncalibrated_copy, write_manifest_doc

from .disk import SmallDisk


def test_a_manifest_written_onto_a_full_disk_stays_as_it_was(tmp_path: Path) -> None:
    disk = SmallDisk(tmp_path / "disk", size_kib=256)
    try:
        manifest = disk.path / "manifest.json"
        old = {"name": "isicnet", "uncertainty": {"paths": {}}}
        manifest.write_text(json.dumps(old), encoding="utf-8")
        disk.fill()
        new = dict(old, uncertainty={"paths": {"bimodal": {"weights": [0.5] * 20000}}})  # larger than what is free
        with pytest.raises(ModelError, match=r"cannot write model manifest .*manifest\.json: No space left on device"):
            write_manifest_doc(manifest, new)
        assert read_manifest_doc(manifest) == old
        with pytest.raises(ModelError, match=r"cannot write .*\.uncalibrated-manifest\.json beside the model manifest"):
            uncalibrated_copy(manifest)  # what a calibration answers the model with
        assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "manifest.json"]
        disk.free()
        write_manifest_doc(manifest, new)  # space back: the same write goes through
        assert read_manifest_doc(manifest) == new
    finally:
        disk.unmount()
