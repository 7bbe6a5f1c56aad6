"""The lot state file: a summary written and read back counts the same; a damaged file is moved aside."""

import logging
from pathlib import Path

import pytest

from isic_station.daemon.lot_store import LotStore
from isic_station.daemon.spec_check import LotSpec, LotSummary

SPEC = LotSpec("L-7", {"cotton": 0.6, "polyester": 0.4}, tolerance_pp=3.0)


def test_a_kept_summary_reads_back_with_the_same_judgement(tmp_path: Path) -> None:
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    for cotton, verdict in ((0.61, "pass"), (0.59, "undetermined"), (0.60, "pass")):
        summary.add({"cotton": cotton, "polyester": 1 - cotton}, {"cotton": 0.01, "polyester": 0.01},
                    {"cotton": [cotton - 0.02, cotton + 0.02], "polyester": [0.38, 0.42]}, verdict,
                    flags=["unknown_fibre"] if verdict == "undetermined" else [])
    store = LotStore(tmp_path)
    store.save(summary)
    again = LotStore(tmp_path).load()
    assert again is not None and again.spec == SPEC
    assert again.to_dict("st", "t") == summary.to_dict("st", "t")
    again.add({"cotton": 0.6, "polyester": 0.4}, {}, None, "pass")
    assert again.to_dict("st", "t")["n"] == 4 and again.to_dict("st", "t")["rule"] == "point_estimate"


def test_no_file_is_no_lot_and_a_damaged_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LotStore(tmp_path)
    assert store.load() is None
    store.path.write_text('{"spec": {"lot_id": "L-7"', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    assert not store.path.exists() and (tmp_path / "lot.json.damaged").exists()
    assert "cannot be read" in caplog.text and "set_lot" in caplog.text
