"""Lot spec check: a measured composition against the lot's declared composition ± tolerance.

Textile labelling rules allow a declared fibre content to be off by a few percentage points
(default here: 5 pp, the usual labelling tolerance). Each fibre is compared on its own; a fibre
the label does not declare counts as declared 0 %, so a foreign fibre above the tolerance fails.

A declaration whose fractions do not sum to 1 (within 1e-6) is rejected, not normalised: a label
of 0.6 + 0.3 is a typo, and silently scaling it to 0.667 + 0.333 would check the lot against a
composition nobody declared.

Decision rule (ILAC-G8 style, on the calibrated 95 % intervals): a result or a lot is `pass` when
every fibre's whole interval lies within declared +- tolerance, `fail` when some fibre's interval
lies wholly outside it, and `undetermined` when an interval straddles a limit; undetermined means
`refer_to_lab`. Without intervals (an uncalibrated model) the point estimate decides (`rule`
says which). A lot is judged on all its results since `set_lot` (`LotSummary`): the mean per fibre
and the 95 % interval of the mean, sqrt((1.96 systematic)^2 + (t(n-1) sd)^2 / n), where
`systematic` is the part of the error averaging does not remove (from the calibration data) and
sd the spread between the lot's results.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from isic_station.messaging.results import REFERRING_FLAGS
from isic_station.schemas import validation_errors

DEFAULT_TOLERANCE_PP = 5.0
Z95 = 1.959963984540054
SUM_TOLERANCE = 1e-6
VERDICTS = ("pass", "fail", "undetermined")
RULE_INTERVAL = "interval_95"
RULE_POINT = "point_estimate"
# Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (numpy has no t distribution);
# beyond 30 the normal 1.96 is within 4 %.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


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

    def declared_fibres(self) -> List[str]:
        """The fibres the declaration holds (share above 0)."""
        return sorted(f for f, v in self.composition.items() if v > 0)

    def to_dict(self) -> Dict[str, Any]:
        """The set_lot payload that gives this spec back through from_dict."""
        return {"lot_id": self.lot_id, "composition": dict(self.composition), "tolerance_pp": self.tolerance_pp}


def judge(spec: LotSpec, intervals: Mapping[str, Sequence[float]]) -> Dict[str, Any]:
    """The decision rule on intervals {fibre: [low, high]} (fractions): verdict and the fibres that decide it.

    Returns {verdict, failing_fibres (interval wholly outside), straddling_fibres (across a limit)}.
    """
    tol = spec.tolerance_pp / 100.0
    failing: List[str] = []
    straddling: List[str] = []
    for f in sorted(set(spec.composition) | set(intervals)):
        low, high = (float(v) for v in intervals.get(f, (0.0, 0.0)))
        declared = spec.composition.get(f, 0.0)
        # a limit met exactly is inside (as the point check); 1e-9 absorbs float rounding of declared +- tol
        lo_limit, hi_limit = declared - tol - 1e-9, declared + tol + 1e-9
        if high < lo_limit or low > hi_limit:
            failing.append(f)
        elif low < lo_limit or high > hi_limit:
            straddling.append(f)
    verdict = "fail" if failing else "undetermined" if straddling else "pass"
    return {"verdict": verdict, "failing_fibres": failing, "straddling_fibres": straddling}


def check_composition(spec: LotSpec, measured: Mapping[str, float],
                      intervals: Optional[Mapping[str, Sequence[float]]] = None) -> Dict[str, Any]:
    """The result's `spec` object: per-fibre deviation (measured - declared, pp), the point check
    (`in_spec`) and the decision rule's `verdict` / `refer_to_lab` on the result's 95 % intervals.

    Fibres missing from either side count as 0 there. Without `intervals` the point estimate decides.
    """
    fibres = sorted(set(spec.composition) | set(measured))
    deviation = {
        f: round(100.0 * (float(measured.get(f, 0.0)) - spec.composition.get(f, 0.0)), 3) for f in fibres
    }
    out: List[str] = [f for f in fibres if abs(deviation[f]) > spec.tolerance_pp]
    if intervals is None:
        points = {f: (float(measured.get(f, 0.0)),) * 2 for f in fibres}
        decision, rule = judge(spec, points), RULE_POINT
    else:
        decision, rule = judge(spec, intervals), RULE_INTERVAL
    return {
        "lot_id": spec.lot_id,
        "tolerance_pp": spec.tolerance_pp,
        "in_spec": not out,
        "deviation_pp": deviation,
        "out_of_spec_fibres": out,
        "verdict": decision["verdict"],
        "refer_to_lab": decision["verdict"] == "undetermined",
        "straddling_fibres": decision["straddling_fibres"],
        "rule": rule,
    }


def majority_blend(counts: Mapping[str, int]) -> Optional[str]:
    """The blend class read most often among `counts` (blend -> results; '' counts for none), ties to the first
    in sorted order; None when no blend was read. The lot's blend, and the calibration's for its groups."""
    named = {b: c for b, c in counts.items() if b and c > 0}
    return max(sorted(named), key=lambda b: named[b]) if named else None


def t975(dof: int) -> float:
    """Two-sided 95 % Student t quantile for `dof` >= 1 degrees of freedom."""
    return T975[dof - 1] if dof <= len(T975) else 1.96


class LotSummary:
    """The running judgement of a lot since `set_lot`: n, mean, sd and the 95 % interval of the mean per fibre.

    `add(composition, systematic, interval=None, verdict=None, blend=None, flags=())` per result:
    `systematic` is the calibration's per-fibre systematic standard deviation for the result's path and
    `blend` (its blend class; {} for an uncalibrated model), `interval` the result's own 95 % interval
    (the lot's interval while n = 1), `flags` its quality flags (those of REFERRING_FLAGS are counted
    and refer the lot). The lot's systematic part is that of the blend most of its results were read
    as (ties: the larger per fibre), the mean of its results' (the systematic error of a mean of pieces
    is at most the mean of theirs; one dim piece in a bright lot must not lend the lot the systematic
    error of dark fabric): one piece misread as a three-fibre blend must not lend the lot that blend's
    far larger bias, nor may it hide it when most pieces read so. A fibre that blend lacks takes what
    the other results lend it, and an undeclared fibre no table bounds the results' own intervals
    (`systematic`): a lot read as linen/viscose whose results hold some cotton must not fail on that
    cotton with no bound on it. Not thread-safe: the inference thread owns it.
    """

    def __init__(self, spec: LotSpec, since: str) -> None:
        self.spec = spec
        self.since = since
        self.n = 0
        self._sum: Dict[str, float] = {}
        self._sum_sq: Dict[str, float] = {}
        self._systematic: Dict[str, Dict[str, float]] = {}  # blend ('' when not given) -> per fibre, summed
        self._blends: Dict[str, int] = {}  # blend -> results read as it
        self._half_sum: Dict[str, float] = {}  # fibre -> summed half-widths of the results' own intervals
        self._first_interval: Optional[Dict[str, Sequence[float]]] = None
        self.verdicts = {v: 0 for v in VERDICTS}
        self.referred = {flag: 0 for flag in REFERRING_FLAGS}  # flag -> results carrying it
        self.calibrated = True

    def add(self, composition: Mapping[str, float], systematic: Mapping[str, float],
            interval: Optional[Mapping[str, Sequence[float]]] = None, verdict: Optional[str] = None,
            blend: Optional[str] = None, flags: Iterable[str] = ()) -> None:
        """Count one result of the lot (its composition, blend, the systematic part, its own verdict, flags)."""
        self.n += 1
        for f, v in composition.items():
            self._sum[f] = self._sum.get(f, 0.0) + float(v)
            self._sum_sq[f] = self._sum_sq.get(f, 0.0) + float(v) ** 2
        key = blend or ""
        self._blends[key] = self._blends.get(key, 0) + 1
        kept = self._systematic.setdefault(key, {})
        for f, v in systematic.items():
            kept[f] = kept.get(f, 0.0) + float(v)
        if interval is None:
            self.calibrated = False
        else:
            for f, (low, high) in interval.items():
                self._half_sum[f] = self._half_sum.get(f, 0.0) + (float(high) - float(low)) / 2.0
        if self.n == 1:
            self._first_interval = interval
        if verdict in self.verdicts:
            self.verdicts[verdict] += 1
        for flag in set(flags) & set(self.referred):
            self.referred[flag] += 1

    def blend(self) -> Optional[str]:
        """The blend class most of the lot's results were read as (None before any result or without blends)."""
        return majority_blend(self._blends)

    def unseen_declared_fibres(self) -> List[str]:
        """Declared fibres the blend most results were read as does not hold (none without a calibrated blend):
        the lot document names them among its reasons (their results carry the calibration's bounds for a
        missed fibre where it often missed one at that share: `UncertaintyCalibration.systematic`)."""
        blend = self.blend()
        if blend is None or not self.calibrated:
            return []
        return sorted(set(self.spec.declared_fibres()) - set(blend.split("/")))

    def systematic(self) -> Dict[str, float]:
        """Per fibre, the systematic standard deviation of the lot's mean: the mean over the results of its
        most common blend for the fibres that blend holds; for those it lacks, the mean over all the results
        (a fibre only some results read lends the mean their bias in their share); and an undeclared fibre
        no table bounds (none of the blends read holds it, yet the results put some of it in the mean) takes
        the results' own intervals: their mean half-width / 1.96, as a result's `uncertainty` is."""
        if not self._blends:
            return {}
        top = max(self._blends.values())
        common = [b for b, count in self._blends.items() if count == top]
        held = {f for b in common for f in b.split("/")}
        out: Dict[str, float] = {}
        for b in common:
            for f, v in self._systematic.get(b, {}).items():
                out[f] = max(out.get(f, 0.0), v / top)
        for f in {f for kept in self._systematic.values() for f in kept} - held:
            out[f] = max(out.get(f, 0.0), sum(kept.get(f, 0.0) for kept in self._systematic.values()) / self.n)
        for f, total in self._half_sum.items():
            if out.get(f, 0.0) == 0.0 and f not in self.spec.composition:
                out[f] = total / self.n / Z95
        return out

    def state(self) -> Dict[str, Any]:
        """Everything the summary counts, as JSON (`from_state` gives it back: kept across a restart)."""
        return {"spec": self.spec.to_dict(), "since": self.since, "n": self.n, "sum": dict(self._sum),
                "sum_sq": dict(self._sum_sq), "systematic_sum": {b: dict(v) for b, v in self._systematic.items()},
                "blends": dict(self._blends), "half_sum": dict(self._half_sum),
                "first_interval": self._first_interval, "verdicts": dict(self.verdicts),
                **self._referred_counts(), "calibrated": self.calibrated}

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> "LotSummary":
        """The summary `state()` wrote (KeyError, TypeError or ValueError when `doc` is not one)."""
        spec = doc["spec"]
        summary = cls(LotSpec(str(spec["lot_id"]), {str(k): float(v) for k, v in spec["composition"].items()},
                              float(spec["tolerance_pp"])), str(doc["since"]))
        summary.n = int(doc["n"])
        summary._sum = {str(k): float(v) for k, v in doc["sum"].items()}
        summary._sum_sq = {str(k): float(v) for k, v in doc["sum_sq"].items()}
        summary._blends = {str(b): int(c) for b, c in doc["blends"].items()}
        # {} when kept before the lot summed its results' half-widths: undeclared fibres then fall back on 0
        summary._half_sum = {str(k): float(v) for k, v in doc.get("half_sum", {}).items()}
        if "systematic_sum" in doc:
            summary._systematic = {str(b): {str(k): float(v) for k, v in fibres.items()}
                                   for b, fibres in doc["systematic_sum"].items()}
        else:  # kept before the mean: the per-blend largest, as if every result of the blend had it
            summary._systematic = {str(b): {str(k): float(v) * summary._blends.get(str(b), 1)
                                            for k, v in fibres.items()}
                                   for b, fibres in doc["systematic"].items()}
        first = doc["first_interval"]
        summary._first_interval = None if first is None else {str(k): [float(v[0]), float(v[1])]
                                                              for k, v in first.items()}
        summary.verdicts = {v: int(doc["verdicts"].get(v, 0)) for v in VERDICTS}
        summary.referred = {flag: int(doc.get(key, 0))  # 0: kept before the lot counted the flag
                            for flag, (key, _) in REFERRING_FLAGS.items()}
        summary.calibrated = bool(doc["calibrated"])
        return summary

    def interval_of_mean(self) -> Dict[str, List[float]]:
        """{fibre: [low, high]} 95 % interval of the lot's mean: sqrt((1.96 systematic)^2 + (t(n-1) sd)^2 / n)."""
        if self.n == 1 and self._first_interval is not None:
            return {f: [float(v[0]), float(v[1])] for f, v in self._first_interval.items()}
        out = {}
        systematic = self.systematic()
        for f, total in self._sum.items():
            mean = total / self.n
            if self.n > 1:
                var = max(0.0, (self._sum_sq[f] - self.n * mean * mean) / (self.n - 1))
                half = math.sqrt((Z95 * systematic.get(f, 0.0)) ** 2 + t975(self.n - 1) ** 2 * var / self.n)
            else:
                half = 0.0
            out[f] = [round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)]
        return out

    def _referred_counts(self) -> Dict[str, int]:
        """The lot document's count of each referring flag's results, by its key there."""
        return {key: self.referred[flag] for flag, (key, _) in REFERRING_FLAGS.items()}

    def to_dict(self, station: str, updated_at: str) -> Dict[str, Any]:
        """The lot document (schema `lot`), retained on `<prefix>/<station>/lot`."""
        mean = {f: round(total / self.n, 4) for f, total in self._sum.items()} if self.n else {}
        sd = {f: round(math.sqrt(max(0.0, (self._sum_sq[f] - self.n * (self._sum[f] / self.n) ** 2)
                                     / (self.n - 1))), 4) for f in self._sum} if self.n > 1 else {}
        interval = self.interval_of_mean() if self.n else {}
        decision = judge(self.spec, interval) if self.n else {"verdict": "undetermined", "failing_fibres": [],
                                                              "straddling_fibres": []}
        reasons = []
        if self.n == 0:
            reasons.append("no results yet")
        elif decision["verdict"] == "undetermined":
            reasons.append("interval of the mean straddles the tolerance for "
                           + ", ".join(decision["straddling_fibres"]))
        unseen = self.unseen_declared_fibres()
        if unseen:
            reasons.append(f"the results read {self.blend()}, without the declared " + ", ".join(unseen))
        reasons += [f"{self.referred[flag]} result(s) {reason}" for flag, (_, reason) in REFERRING_FLAGS.items()
                    if self.referred[flag]]
        return {
            "schema_version": 1,
            "station": station,
            "lot_id": self.spec.lot_id,
            "declared": dict(self.spec.composition),
            "tolerance_pp": self.spec.tolerance_pp,
            "since": self.since,
            "updated_at": updated_at,
            "n": self.n,
            "mean": mean,
            "sd": sd,
            "systematic": {f: round(v, 4) for f, v in sorted(self.systematic().items())},
            "blend": self.blend(),
            "interval_95": interval,
            "verdict": decision["verdict"],
            "failing_fibres": decision["failing_fibres"],
            "straddling_fibres": decision["straddling_fibres"],
            "refer_to_lab": decision["verdict"] == "undetermined" or any(self.referred.values()),
            "reasons": reasons,
            "results": dict(self.verdicts),
            **self._referred_counts(),
            "rule": RULE_INTERVAL if self.calibrated else RULE_POINT,
            "replayed": False,
        }
