"""The documents the station publishes: results, health and alarms (schemas in `schemas/`).

Built in one place so every producer fills the same keys the same way: a uuid4 `message_id`
that stays the same on every re-send (consumers drop duplicates by it), ISO 8601 UTC times,
and `schema_version`. The per-station `sequence` comes from `Outbox.next_sequence()`, which keeps
the counter in the outbox database so it keeps increasing across restarts.
"""

import uuid
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from isic_station.schemas import load_schema

SCHEMA_VERSION = 1

# The quality flags a result may carry, in the order results list them: the result schema's enum.
RESULT_FLAGS = tuple(load_schema("result")["properties"]["flags"]["items"]["enum"])
# A result flagged with any of these is the lab's to decide (`refer_to_lab`), whatever its spec check says, and
# so is its lot, however its mean reads: the lot document's count of such results, and the reason it gives.
REFERRING_FLAGS: Dict[str, Tuple[str, str]] = {
    "unknown_fibre": ("unknown_fibre_results", "likely holding a fibre the model does not know"),
    "outside_trained_range": ("outside_trained_results", "measured outside the conditions the model was trained in"),
    "uncalibrated_settings": ("uncalibrated_settings_results",
                              "measured with fewer scans, frames or field than the uncertainty calibration's"),
    "no_room_reading": ("unread_room_results", "measured without the room temperature the model takes as an input"),
}


def utc_iso(moment: Optional[datetime] = None) -> str:
    """`moment` (default: now) as ISO 8601 UTC with milliseconds and a `Z`, e.g. 2026-11-21T19:30:00.123Z."""
    moment = moment or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone: pass an aware (UTC) datetime")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_result(
    *,
    station: str,
    sequence: int,
    composition: Mapping[str, float],
    blend: str,
    confidence: float,
    uncertainty: Mapping[str, float],
    flags: Iterable[str],
    model: Mapping[str, str],
    backend: str,
    timings_ms: Mapping[str, float],
    sample_id: Optional[str] = None,
    lot_id: Optional[str] = None,
    spec: Optional[Mapping[str, Any]] = None,
    measured_at: Optional[datetime] = None,
    interval_95: Optional[Mapping[str, Any]] = None,
    unknown_fibre_score: Optional[float] = None,
    temperature_c: Optional[float] = None,
) -> Dict[str, Any]:
    """A result document (schema `result`); `out_of_spec` is added to the flags when `spec`'s verdict
    is fail, `refer_to_lab` when it is undetermined (or when one of REFERRING_FLAGS is among the flags).

    `model` is {name, version, sha256, manifest_sha256?}; `timings_ms` is {acquire, preprocess, infer, total};
    `spec` is what `spec_check.check_composition` returned, or None when no lot is set;
    `interval_95` {fibre: [low, high]} and `unknown_fibre_score` come from the calibration (None without);
    `temperature_c` is the room by the spectrometer's sensor (None: it has none).
    """
    flag_set = set(flags)
    unknown = sorted(flag_set - set(RESULT_FLAGS))
    if unknown:
        raise ValueError(f"unknown result flag(s) {unknown}; known: {list(RESULT_FLAGS)}")
    if spec is not None and spec["verdict"] == "fail":
        flag_set.add("out_of_spec")
    if flag_set & REFERRING_FLAGS.keys() or (spec is not None and spec["refer_to_lab"]):
        flag_set.add("refer_to_lab")
    flag_list = [f for f in RESULT_FLAGS if f in flag_set]  # in a stable order
    return {
        "schema_version": SCHEMA_VERSION,
        "message_id": str(uuid.uuid4()),
        "sequence": int(sequence),
        "measured_at": utc_iso(measured_at),
        "station": station,
        "sample_id": sample_id,
        "lot_id": lot_id,
        "composition": {k: float(v) for k, v in composition.items()},
        "blend": blend,
        "confidence": float(confidence),
        "uncertainty": {k: float(v) for k, v in uncertainty.items()},
        "interval_95": None if interval_95 is None else {k: [float(v[0]), float(v[1])] for k, v in interval_95.items()},
        "unknown_fibre_score": None if unknown_fibre_score is None else float(unknown_fibre_score),
        "temperature_c": None if temperature_c is None else float(temperature_c),
        "flags": flag_list,
        "model": {"name": model["name"], "version": model["version"], "sha256": model["sha256"],
                  **({"manifest_sha256": model["manifest_sha256"]} if "manifest_sha256" in model else {})},
        "backend": backend,
        "timings_ms": {k: round(float(timings_ms[k]), 3) for k in ("acquire", "preprocess", "infer", "total")},
        "spec": dict(spec) if spec is not None else None,
        "replayed": False,
    }


def build_alarm(
    *, station: str, kind: str, severity: str, message: str, details: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """An alarm document (schema `alarm`): kind out_of_spec | device_fault | storage_fault."""
    return {
        "schema_version": SCHEMA_VERSION,
        "message_id": str(uuid.uuid4()),
        "raised_at": utc_iso(),
        "station": station,
        "kind": kind,
        "severity": severity,
        "message": message,
        "details": dict(details or {}),
        "replayed": False,
    }


def out_of_spec_alarm(result: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The alarm for a result whose lot check failed (verdict fail), or None otherwise or when no lot is set."""
    spec = result.get("spec")
    if spec is None or spec["verdict"] != "fail":
        return None
    worst = max(spec["out_of_spec_fibres"] or list(spec["deviation_pp"]), key=lambda f: abs(spec["deviation_pp"][f]))
    return build_alarm(
        station=result["station"],
        kind="out_of_spec",
        severity="warning",
        message=(
            f"lot {spec['lot_id']} out of spec: {worst} off by {spec['deviation_pp'][worst]:+.1f} pp "
            f"(tolerance ±{spec['tolerance_pp']:g} pp)"
        ),
        details={
            "sequence": result["sequence"],
            "result_message_id": result["message_id"],
            "sample_id": result["sample_id"],
            "lot_id": result["lot_id"],
            "spec": spec,
        },
    )


def refer_to_lab_alarm(result: Mapping[str, Any], uncalibrated_flags: Iterable[str] = (),
                       condition_problem: Optional[str] = None,
                       settings_problem: Optional[str] = None,
                       room_problem: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The alarm for a result the lab must decide (flag `refer_to_lab`), naming why (`condition_problem`:
    `Manifest.condition_problem`'s words for an `outside_trained_range` result; `settings_problem`:
    `uncertainty.settings_problem`'s for an `uncalibrated_settings` one; `room_problem`:
    `Manifest.unread_room_problem`'s for a `no_room_reading` one); None otherwise."""
    if "refer_to_lab" not in result["flags"]:
        return None
    reasons = []
    spec = result.get("spec")
    if spec is not None and spec["refer_to_lab"]:
        straddling = ", ".join(f"{f} {spec['deviation_pp'][f]:+.1f} pp" for f in spec.get("straddling_fibres", ()))
        reasons.append(f"lot {spec['lot_id']}: interval straddles the ±{spec['tolerance_pp']:g} pp tolerance "
                       f"({straddling})")
    problems = {"unknown_fibre": f"{REFERRING_FLAGS['unknown_fibre'][1]} (score {result.get('unknown_fibre_score')})",
                "outside_trained_range": condition_problem, "uncalibrated_settings": settings_problem,
                "no_room_reading": room_problem}
    reasons += [problems.get(flag) or reason for flag, (_, reason) in REFERRING_FLAGS.items()
                if flag in result["flags"]]
    untrusted = sorted(set(uncalibrated_flags))
    if untrusted:
        reasons.append("quality flag(s) the uncertainty calibration never saw: " + ", ".join(untrusted))
    return build_alarm(
        station=result["station"],
        kind="refer_to_lab",
        severity="warning",
        message=f"sample {result['sample_id']}: refer to the lab: " + "; ".join(reasons),
        details={"sequence": result["sequence"], "result_message_id": result["message_id"],
                 "sample_id": result["sample_id"], "lot_id": result["lot_id"], "reasons": reasons,
                 "spec": spec},
    )


def build_health(
    *,
    station: str,
    uptime_s: float,
    results: Mapping[str, Any],
    inference_ms: Mapping[str, Optional[float]],
    devices: Mapping[str, Mapping[str, Any]],
    calibration: Mapping[str, Optional[float]],
    outbox: Mapping[str, Any],
    mqtt: Mapping[str, Any],
) -> Dict[str, Any]:
    """A health document (schema `health`). The station supplies uptime, results {total, per_minute},
    inference_ms {p50, p99}, devices {name: {state, reconnects}} and calibration {dark_age_s, white_age_s};
    the MQTT link adds outbox (`OutboxStats.to_dict()`) and mqtt (`MqttLink.stats()`)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "station": station,
        "reported_at": utc_iso(),
        "uptime_s": round(float(uptime_s), 3),
        "results": dict(results),
        "inference_ms": dict(inference_ms),
        "outbox": dict(outbox),
        "mqtt": dict(mqtt),
        "devices": {k: dict(v) for k, v in devices.items()},
        "calibration": dict(calibration),
    }
