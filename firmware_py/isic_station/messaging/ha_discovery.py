"""Home Assistant MQTT discovery: the entities a dashboard gets without any YAML.

Retained JSON configs at `<discovery_prefix>/<component>/<node_id>/<object_id>/config` for the
composition of each fibre (%), the blend class, the confidence (%) and the station's availability,
all grouped under one device and made unavailable by the station's status topic. They read the
retained latest-state topic with value templates. An empty retained payload on a config topic
removes that entity (used when a new model drops a fibre). The MQTT link publishes them on every
connect and again whenever `homeassistant/status` turns `online` (Home Assistant restarted).
"""

import json
import re
from typing import Any, Dict, List, Sequence, Tuple

from isic_station.schemas import schema_default

# The prefix is the config's (`mqtt.discovery_prefix`); the birth topic and the delivery are Home
# Assistant's own contract (its MQTT discovery docs: configs retained, so a restarted Home Assistant
# finds them; `<prefix>/status` carries `online`), not a payload of ours with a schema.
DEFAULT_DISCOVERY_PREFIX: str = schema_default("mqtt.discovery_prefix")
BIRTH_TOPIC_SUFFIX = "status"
DISCOVERY_DELIVERY: Dict[str, Any] = {"qos": 1, "retain": True}


def node_id(station: str) -> str:
    """The station id reduced to what Home Assistant accepts in a node id ([a-zA-Z0-9_-])."""
    return "isic_" + re.sub(r"[^a-zA-Z0-9_-]", "_", station)


def _topic(prefix: str, component: str, station: str, object_id: str) -> str:
    return f"{prefix}/{component}/{node_id(station)}/{object_id}/config"


def discovery_messages(
    *,
    station: str,
    state_topic: str,
    status_topic: str,
    fibres: Sequence[str],
    sw_version: str,
    model: str = "ISiC textile inspection station",
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> List[Tuple[str, str]]:
    """(topic, JSON payload) for every entity; publish each retained."""
    node = node_id(station)
    device = {
        "identifiers": [node],
        "name": f"ISiC {station}",
        "model": model,
        "manufacturer": "ISiC",
        "sw_version": sw_version,
    }
    common: Dict[str, Any] = {
        "device": device,
        "availability_topic": status_topic,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    entities: List[Tuple[str, str, Dict[str, Any]]] = []
    for fibre in fibres:
        entities.append(("sensor", f"composition_{_object(fibre)}", {
            "name": f"{fibre.capitalize()} content",
            "state_topic": state_topic,
            "value_template": f"{{{{ (value_json.composition['{fibre}'] * 100) | round(1) }}}}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "icon": "mdi:texture-box",
        }))
    entities.append(("sensor", "blend", {
        "name": "Blend",
        "state_topic": state_topic,
        "value_template": "{{ value_json.blend }}",
        "icon": "mdi:tshirt-crew",
    }))
    entities.append(("sensor", "confidence", {
        "name": "Confidence",
        "state_topic": state_topic,
        "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
        "unit_of_measurement": "%",
        "state_class": "measurement",
    }))
    messages = []
    for component, object_id, config in entities:
        config.update(common)
        config["unique_id"] = f"{node}_{object_id}"
        messages.append((_topic(discovery_prefix, component, station, object_id), json.dumps(config)))
    # The status entity is itself the availability: it must not be made unavailable by it.
    status = {
        "name": "Status",
        "state_topic": status_topic,
        "value_template": "{{ value_json.state }}",
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "unique_id": f"{node}_status",
        "device": device,
    }
    messages.append((_topic(discovery_prefix, "binary_sensor", station, "status"), json.dumps(status)))
    return messages


def removal_messages(
    *, station: str, fibres: Sequence[str], discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX
) -> List[Tuple[str, str]]:
    """(topic, empty payload) that remove the composition entities of `fibres`; publish each retained."""
    return [(_topic(discovery_prefix, "sensor", station, f"composition_{_object(f)}"), "") for f in fibres]


def _object(fibre: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", fibre)
