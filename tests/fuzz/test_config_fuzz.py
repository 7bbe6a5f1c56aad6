"""Fuzzing the config loader: whatever a technician (or a broken disk) puts in the TOML file, loading it
either gives a Config or raises ConfigError naming the problem: never another exception, never a hang.

Two generators: arbitrary text in the file (exercises the TOML parser's error path) and the shipped
example configs with keys removed, added or given values of any TOML type (exercises the schema and
the cross-key checks). Each example has a deadline; the pytest timeout bounds the whole test.
"""

import math
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isic_common.errors import ConfigError
from isic_station.config import Config, config_from_document, load_config, tomllib
from isic_station.schemas import load_schema

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = {p.name: tomllib.loads(p.read_text(encoding="utf-8")) for p in sorted(CONFIG_DIR.glob("*.toml"))}
FUZZ = settings(max_examples=300, deadline=timedelta(milliseconds=500),
                suppress_health_check=[HealthCheck.too_slow])

# Values of every type a TOML document can hold (TOML has no null).
toml_scalars = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
                         st.datetimes(), st.dates(), st.times())
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
names = st.one_of(st.sampled_from(sorted({k for doc in EXAMPLES.values() for s in doc.values()
                                          if isinstance(s, dict) for k in s})), st.text(max_size=16))


@st.composite
def mutated_documents(draw: Any) -> Dict[str, Any]:
    """An example config with a few sections/keys deleted, replaced by any TOML value, or added."""
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in draw(st.sampled_from(sorted(EXAMPLES.items())))[1]
           .items()}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(doc) + ["station", "mqtt", "unknown_section"]))
        action = draw(st.sampled_from(["delete", "replace", "add", "section"]))
        if action == "section":
            doc[section] = draw(toml_values)
            continue
        table = doc.setdefault(section, {})
        if not isinstance(table, dict):
            continue
        if action == "delete" and table:
            del table[draw(st.sampled_from(sorted(table)))]
        elif action == "replace" and table:
            table[draw(st.sampled_from(sorted(table)))] = draw(toml_values)
        else:
            table[draw(names)] = draw(toml_values)
    return doc


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_examples_load(name: str) -> None:
    assert isinstance(config_from_document(EXAMPLES[name], CONFIG_DIR), Config)


@FUZZ
@given(doc=mutated_documents())
def test_any_document_gives_a_config_or_a_config_error(doc: Dict[str, Any]) -> None:
    try:
        config = config_from_document(doc, Path("/etc/isic-station"), source=Path("station.toml"))
    except ConfigError as exc:
        assert str(exc).startswith("config file station.toml"), str(exc)
        return
    assert isinstance(config, Config)
    for number in (config.mode.interval_s, config.spectrometer.timeout_s, config.outbox.quota_mb,
                   config.health.interval_s, config.calibration.max_age_h):
        assert math.isfinite(number) and number > 0, f"accepted a non-finite or non-positive setting: {number}"


@FUZZ
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda b: b.decode("latin-1"))))
def test_any_file_gives_a_config_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "station.toml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_undecodable_bytes_are_a_config_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "station.toml"
        path.write_bytes(b"[station]\nid = \"" + raw + b"\"\n")
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


NUMBER_KEYS = [(section, key) for section, spec in load_schema("config")["properties"].items()
               for key, prop in spec["properties"].items() if prop.get("type") == "number"]


@pytest.mark.parametrize("section,key", NUMBER_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_by_name(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = tmp_path / "station.toml"
    path.write_text(f'[station]\nid = "s1"\n[{section}]\n{key} = {value}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*(finite|greater|less)"):
        load_config(path)
