"""Fibre compositions as people type them: `cotton=0.62,polyester=0.38` (fractions 0..1 summing to 1)."""

from typing import Dict

from isic_plant.errors import PlantError

SUM_TOLERANCE = 0.005


def parse_composition(text: str) -> Dict[str, float]:
    """`fibre=fraction,...` -> {fibre: fraction}; PlantError naming what is wrong."""
    result: Dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        fibre, sep, value = part.partition("=")
        fibre = fibre.strip()
        if not sep or not fibre:
            raise PlantError(f"composition part {part!r} is not fibre=fraction (e.g. cotton=0.62,polyester=0.38)")
        try:
            result[fibre] = float(value)
        except ValueError:
            raise PlantError(f"composition: {fibre}={value!r} is not a number") from None
    return check_composition(result)


def check_composition(composition: Dict[str, float]) -> Dict[str, float]:
    """The composition itself when every fraction is 0..1 and they sum to 1; else PlantError."""
    if not composition:
        raise PlantError("composition is empty: give fibre=fraction pairs, e.g. cotton=0.62,polyester=0.38")
    for fibre, value in composition.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise PlantError(f"composition: {fibre}={value!r} is not a fraction between 0 and 1")
    total = sum(composition.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise PlantError(f"composition sums to {total:.3f}, not 1 (fractions, not percent: cotton=0.62, not 62)")
    return {k: float(v) for k, v in composition.items()}
