"""The README's topic and payload tables are generated from the schemas and kept up to date."""

import subprocess
import sys
from pathlib import Path

import pytest

from isic_common.errors import StationError
from isic_station.messaging.commands import COMMAND_NAMES
from isic_station.messaging.mqtt_link import StationTopics
from isic_station.schemas import load_schema
from isic_station.tools.schema_docs import BEGIN, END, PAYLOAD_SCHEMAS, render, update_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tables_are_up_to_date():
    text = README.read_text(encoding="utf-8")
    assert update_readme(text) == text, "run: isic-station schema-docs --write README.md"
    section = text.split("## Topics and payloads", 1)[1].split("\n## ", 1)[0]
    assert BEGIN in section and END in section, "the generated block belongs to the Topics and payloads section"


def test_check_command_fails_on_a_stale_readme(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{BEGIN}\n| old table |\n{END}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "isic_station.cli", "schema-docs", "--check", str(stale)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "out of date" in out.stderr
    subprocess.run(cmd[:-2] + ["--write", str(stale)], check=True, capture_output=True, timeout=60)
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    assert "| old table |" not in stale.read_text(encoding="utf-8")


def test_missing_markers_are_a_clear_error():
    with pytest.raises(StationError, match="schema-docs:begin"):
        update_readme("# no markers here\n")


def test_documented_topics_are_the_ones_the_link_uses():
    topics = StationTopics("<prefix>", "<station>")
    used = {"status": topics.status, "result": topics.result, "health": topics.health, "alarm": topics.alarm,
            "lot": topics.lot, "command_request": topics.command("<name>"),
            "command_response": topics.response("<name>")}
    for name in PAYLOAD_SCHEMAS:
        assert load_schema(name)["x-mqtt"]["topic"] == used[name]
    assert load_schema("result")["x-mqtt"]["also"] == topics.state


def test_every_command_and_field_is_in_the_tables():
    text = render()
    for name in COMMAND_NAMES:
        assert f"| `{name}` |" in text
    for key in load_schema("result")["properties"]:
        assert f"| `{key}` |" in text
    assert "| `spec.deviation_pp` |" in text
