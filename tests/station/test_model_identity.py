"""The model's identity covers its manifest: a permuted fibre list under the same version is refused by
`reload_model`, and every result names the manifest's own sha256 beside the graph's."""

import json
from pathlib import Path

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_station.config import load_config
from isic_station.daemon.command_handlers import CommandHandlers, JobRunner, LotState
from isic_station.daemon.model_slot import ModelSlot
from isic_station.daemon.wiring import build_parts
from isic_station.manifest import load_manifest
from isic_station.messaging.commands import CommandError
from isic_station.messaging.results import build_result
from isic_station.schemas import validation_errors


class ModelAndCommands:
    """The station's model slot and its command handlers, on the configured parts (no devices opened)."""

    def __init__(self, config) -> None:
        self.model = ModelSlot(build_parts(config).model)
        self.reloaded = []
        self.commands = CommandHandlers(JobRunner(), self.model, LotState(), model_loaded=self.reloaded.append,
                                        status=lambda pipeline: {})


@pytest.fixture
def station(tmp_path: Path):
    manifest = write_tiny_model(tmp_path / "model", om=False)
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "ident-1"\nstate_dir = "{tmp_path}/state"\n[model]\n'
                      f'manifest = "{manifest}"\nbackend = "onnxruntime"\nthreads = 1\n', encoding="utf-8")
    made = ModelAndCommands(load_config(config))
    made.model.load()
    yield made, manifest
    made.model.close()


def permute_fibres(manifest: Path) -> None:
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    doc["fibres"] = list(reversed(doc["fibres"]))
    manifest.write_text(json.dumps(doc), encoding="utf-8")


def test_a_permuted_fibre_list_is_a_different_model(station, tmp_path: Path) -> None:
    st, manifest = station
    before = load_manifest(manifest).identity()
    permute_fibres(manifest)
    after = load_manifest(manifest).identity()
    assert before["sha256"] == after["sha256"], "the graph did not change..."
    assert before["manifest_sha256"] != after["manifest_sha256"], "...but the model did"


def test_reload_model_refuses_a_changed_manifest_under_the_same_version(station) -> None:
    st, manifest = station
    running = st.model.manifest.identity()
    assert st.commands.reload_model({})["model"] == running  # unchanged: reloads fine
    permute_fibres(manifest)
    with pytest.raises(CommandError, match="changed on disk .* without a new version"):
        st.commands.reload_model({})
    assert st.model.manifest.identity() == running, "the previous model keeps running"
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    doc["model"]["version"] += "-relabelled"
    manifest.write_text(json.dumps(doc), encoding="utf-8")
    data = st.commands.reload_model({})
    assert data["model"]["manifest_sha256"] != running["manifest_sha256"] and data["fibres"] == doc["fibres"]
    assert [m.version for m in st.reloaded] == [running["version"], doc["model"]["version"]], \
        "the station hears of each model reloaded (Home Assistant's entities follow it), not of the refused one"


def test_results_carry_the_manifest_sha256(station) -> None:
    st, _ = station
    identity = st.model.manifest.identity("signal_only")
    doc = build_result(station="s", sequence=1, composition={"cotton": 1.0}, blend="cotton", confidence=0.9,
                       uncertainty={"cotton": 0.0}, flags=[], model=identity, backend="onnxruntime",
                       timings_ms={"acquire": 1, "preprocess": 1, "infer": 1, "total": 3})
    assert doc["model"]["manifest_sha256"] == st.model.manifest.sha256 and validation_errors(doc, "result") == []
