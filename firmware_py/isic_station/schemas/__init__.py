"""JSON Schemas kept in the repo: the model manifest, the config, result and command payloads.

They are the single source of truth for those contracts: the runtime validates against them,
the tests validate every payload against them, and the README tables are generated from them.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

SCHEMA_DIR = Path(__file__).resolve().parent
# Every command request and response shares these envelopes; each other `command_<name>` is one command.
COMMAND_ENVELOPES = ("command_request", "command_response")


@lru_cache(maxsize=None)
def load_schema(name: str) -> Dict[str, Any]:
    """The schema `<name>.schema.json` from this folder."""
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as fh:
        return json.load(fh)


def schema_property(name: str, path: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The property at `path` (e.g. ["mqtt", "host"]) of schema `name`, None when there is none."""
    node: Optional[Dict[str, Any]] = load_schema(name)
    for part in path:
        node = (node or {}).get("properties", {}).get(part)
        if node is None:
            return None
    return node


def schema_default(key: str, name: str = "config") -> Any:
    """The default of `key` ('section.name') in schema `name` (the config's unless told), for code that
    needs it outside a validated document (link settings, Home Assistant's prefix)."""
    prop = schema_property(name, key.split("."))
    if prop is None or "default" not in prop:
        raise KeyError(f"the {name} schema has no default for {key}")
    return prop["default"]


def validation_errors(document: Any, name: str) -> list:
    """Every violation of schema `name` in `document`, each as 'path: message' (empty when valid)."""
    import jsonschema  # here, not at the top: the console commands' registration reads this module (fast --help)

    schema = load_schema(name)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]


def delivery(name: str) -> Dict[str, Any]:
    """`{"qos", "retain"}` of the topic that carries schema `name`, from the schema's `x-mqtt` block
    (the one place they are stated), ready to pass to a publish call as keywords."""
    block = load_schema(name)["x-mqtt"]
    return {"qos": block["qos"], "retain": block["retain"]}


def command_names() -> Tuple[str, ...]:
    """The MQTT commands: one per `command_<name>.schema.json` besides the envelopes, in name order. The
    schema file is where a command is declared (its name and its payload); everything else reads it here."""
    files = (path.name[:-len(".schema.json")] for path in SCHEMA_DIR.glob("command_*.schema.json"))
    return tuple(sorted(name[len("command_"):] for name in files if name not in COMMAND_ENVELOPES))
