"""The udev rules: stable names by USB id, in the groups the unit's SupplementaryGroups= grant.

No udev runs here, so the rules are checked for what would break them silently on a board: a
misspelt key or operator (udev ignores the line), an id that is not 4 lower-case hex digits (it
never matches), a group the service is not in (the device opens as "permission denied").
"""

import re
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "drivers" / "isic_drivers" / "udev" / "99-isic-station.rules"
UNIT = REPO / "systemd" / "isic-station.service"

# key, optional {attribute}, operator, "value" (udev(7) syntax)
TERM = re.compile(r'^(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|:=|=)"(?P<value>[^"]*)"$')
MATCH_KEYS = {"SUBSYSTEM", "ATTRS", "ATTR", "KERNEL", "ENV"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE"}


def rules() -> List[List[Tuple[str, str, str, str]]]:
    parsed = []
    for number, line in enumerate(RULES.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        terms = []
        for term in (t.strip() for t in line.split(",")):
            found = TERM.match(term)
            assert found, f"{RULES.name}:{number}: cannot parse {term!r}"
            terms.append((found["key"], found["attr"] or "", found["op"], found["value"]))
        parsed.append(terms)
    return parsed


def as_dict(rule: List[Tuple[str, str, str, str]]) -> Dict[str, Tuple[str, str]]:
    return {f"{key}{{{attr}}}" if attr else key: (op, value) for key, attr, op, value in rule}


def test_every_rule_matches_by_usb_id_and_assigns_a_stable_name():
    links = set()
    for rule in rules():
        for key, _, op, _ in rule:
            assert (key in MATCH_KEYS and op in ("==", "!=")) or (key in ASSIGN_KEYS and op in ("=", "+=")), rule
        terms = as_dict(rule)
        assert re.fullmatch(r"[0-9a-f]{4}", terms["ATTRS{idVendor}"][1]), rule
        if "ATTRS{idProduct}" in terms:
            assert re.fullmatch(r"[0-9a-f]{4}", terms["ATTRS{idProduct}"][1]), rule
        subsystem, link, group = terms["SUBSYSTEM"][1], terms["SYMLINK"][1], terms["GROUP"][1]
        assert (subsystem, link, group) in {("tty", "isic-spectrometer", "dialout"),
                                            ("video4linux", "isic-microscope", "video")}, rule
        assert terms["MODE"][1] == "0660"
        links.add(link)
    assert links == {"isic-spectrometer", "isic-microscope"}


def test_groups_are_the_ones_the_service_runs_with():
    unit = UNIT.read_text(encoding="utf-8")
    groups = set(re.search(r"^SupplementaryGroups=(.*)$", unit, re.M).group(1).split())
    assert {as_dict(rule)["GROUP"][1] for rule in rules()} <= groups


def test_config_template_uses_the_stable_names():
    board = (REPO / "config" / "atlas-200dk.toml").read_text(encoding="utf-8")
    assert re.search(r'^port = "/dev/isic-spectrometer"', board, re.M)
    assert re.search(r'^source = "/dev/isic-microscope"', board, re.M)
