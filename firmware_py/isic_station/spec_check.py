"""Lot spec check: a measured composition against the lot's declared composition ± tolerance.

Textile labelling rules allow a declared fibre content to be off by a few percentage points
(default here: 5 pp, the usual labelling tolerance). Each fibre is compared on its own; a fibre
the label does not declare counts as declared 0 %, so a foreign fibre above the tolerance fails.

A declaration whose fractions do not sum to 1 (within 1e-6) is rejected, not normalised: a label
of 0.6 + 0.3 is a typo, and silently scaling it to 0.667 + 0.333 would check the lot against a
composition nobody declared.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional

from isic_station.schemas import validation_errors

DEFAULT_TOLERANCE_PP = 5.0
SUM_TOLERANCE = 1e-6


class InvalidLotSpec(ValueError):
    """A lot specification that cannot be checked against (names the field and what is expected)."""


@dataclass(frozen=True)
class LotSpec:
    """A lot's declared composition (fractions 0..1 summing to 1) and the tolerance in percentage points."""

    lot_id: str
    composition: Dict[str, float]
    tolerance_pp: float = DEFAULT_TOLERANCE_PP

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], known_fibres: Optional[Iterable[str]] = None) -> "LotSpec":
        """A validated LotSpec from a set_lot payload; InvalidLotSpec names what is wrong.

        `known_fibres` (the model's labels), when given, rejects fibres the model cannot measure.
        """
        errors = validation_errors(dict(doc), "command_set_lot")
        if errors:
            raise InvalidLotSpec("; ".join(errors))
        composition = {str(k): float(v) for k, v in doc["composition"].items()}
        total = math.fsum(composition.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise InvalidLotSpec(
                f"composition: fractions sum to {total:.6g}, expected 1 (within {SUM_TOLERANCE:g}); "
                "give fractions 0..1, e.g. {\"cotton\": 0.65, \"polyester\": 0.35}"
            )
        if known_fibres is not None:
            known = sorted(known_fibres)
            unknown = sorted(set(composition) - set(known))
            if unknown:
                raise InvalidLotSpec(f"composition: unknown fibre(s) {unknown}; the model measures {known}")
        return cls(str(doc["lot_id"]), composition, float(doc.get("tolerance_pp", DEFAULT_TOLERANCE_PP)))

    def to_dict(self) -> Dict[str, Any]:
        """The set_lot payload that gives this spec back through from_dict."""
        return {"lot_id": self.lot_id, "composition": dict(self.composition), "tolerance_pp": self.tolerance_pp}


def check_composition(spec: LotSpec, measured: Mapping[str, float]) -> Dict[str, Any]:
    """The result's `spec` object: per-fibre deviation (measured - declared, pp) and whether all are in tolerance.

    Fibres missing from either side count as 0 there.
    """
    fibres = sorted(set(spec.composition) | set(measured))
    deviation = {
        f: round(100.0 * (float(measured.get(f, 0.0)) - spec.composition.get(f, 0.0)), 3) for f in fibres
    }
    out: List[str] = [f for f in fibres if abs(deviation[f]) > spec.tolerance_pp]
    return {
        "lot_id": spec.lot_id,
        "tolerance_pp": spec.tolerance_pp,
        "in_spec": not out,
        "deviation_pp": deviation,
        "out_of_spec_fibres": out,
    }
