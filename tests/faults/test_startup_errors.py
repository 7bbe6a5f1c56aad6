"""What a technician sees when the station cannot start: a missing or corrupt model, a bad config, a state
directory it cannot write. `isic-station run` ends with one clear line naming the cause and the exit
code systemd acts on (78 = EX_CONFIG, never restarted; 74 = EX_IOERR), and never a traceback.

Start-up opens the outbox and loads the model before it touches a device, so no emulator is needed.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from fakes.tiny_isicnet import tiny_station_config
from isic_common.errors import EX_CONFIG, EX_IOERR
from isic_station.tools.demo import station_command

pytestmark = pytest.mark.timeout(60)  # each wait inside is bounded too; this bounds the whole test

def write_config(workdir: Path, manifest: Path, state_dir: str = "state", extra: str = "") -> Path:
    path = workdir / "station.toml"
    text = tiny_station_config(manifest, "startup-1", state_dir, f"{workdir}/no-such-port", mqtt="port = 1")
    path.write_text(text + extra, encoding="utf-8")
    return path


def missing_manifest(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    gone = workdir / "nowhere" / "manifest.json"
    return write_config(workdir, gone), EX_CONFIG, str(gone)


def manifest_not_json(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    manifest.write_bytes(b"\x00{not json")
    return write_config(workdir, manifest), EX_CONFIG, str(manifest)


def graph_file_corrupt(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    graph = sorted(manifest.parent.glob("*.onnx"))[0]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return write_config(workdir, manifest), EX_CONFIG, graph.name


def graph_file_unloadable(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    """Garbage whose sha256 the manifest was updated to: it passes the checksum, ONNX Runtime refuses it."""
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    for graph in doc["graphs"].values():
        junk = b"not an onnx model " * 64
        (manifest.parent / graph["onnx"]).write_bytes(junk)
        graph["sha256"] = hashlib.sha256(junk).hexdigest()
    manifest.write_text(json.dumps(doc), encoding="utf-8")
    return write_config(workdir, manifest), EX_CONFIG, ".onnx"


def config_not_toml(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    path = write_config(workdir, manifest, extra="[mqtt\nport = = 3\n")
    return path, EX_CONFIG, "not valid TOML"


def config_unknown_key(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    return write_config(workdir, manifest, extra="[outbox]\nquota_gb = 3\n"), EX_CONFIG, "quota_gb"


def config_wrong_type(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    return write_config(workdir, manifest, extra="[pipeline]\nqueue_size = \"four\"\n"), EX_CONFIG, "queue_size"


def state_dir_under_a_file(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    blocker = workdir / "not-a-directory"
    blocker.write_text("a file where the state directory should be", encoding="utf-8")
    return write_config(workdir, manifest, state_dir=str(blocker / "state")), EX_IOERR, str(blocker)


def state_dir_read_only(workdir: Path, manifest: Path) -> Tuple[Path, int, str]:
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories; the state-dir-under-a-file case covers root")
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    return write_config(workdir, manifest, state_dir=str(locked / "state")), EX_IOERR, str(locked)


CASES: Dict[str, Callable[[Path, Path], Tuple[Path, int, str]]] = {
    f.__name__: f for f in (missing_manifest, manifest_not_json, graph_file_corrupt, graph_file_unloadable,
                            config_not_toml, config_unknown_key, config_wrong_type, state_dir_under_a_file,
                            state_dir_read_only)
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cannot_start_says_why_in_one_line_with_the_right_exit_code(tmp_path: Path, tiny_model: Path,
                                                                    case: str) -> None:
    config, code, names = CASES[case](tmp_path, tiny_model)
    proc = subprocess.run(station_command() + ["run", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "finishing measurements" not in proc.stderr, "nothing was measured: no 'stopping' line"
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("isic-station: error: ") and names in last, proc.stderr
    assert len(last) < 1000, "the error line should be readable"
