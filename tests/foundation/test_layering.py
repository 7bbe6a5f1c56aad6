"""The layering holds: isic_common <- isic_drivers <- isic_station <- isic_model / isic_plant, and no import cycle.

Read from the source with `ast` (every import statement, also the ones inside functions), not by
importing the packages: an import that only runs in one handler counts as much as one at the top.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("firmware_py", "drivers", "models_om", "plant")
# What each package may import of ours (ARCHITECTURE.md, "Import packages").
MAY_IMPORT = {
    "isic_common": set(),
    "isic_drivers": {"isic_common"},
    "isic_station": {"isic_common", "isic_drivers"},
    "isic_model": {"isic_common", "isic_drivers", "isic_station"},
    "isic_plant": {"isic_common", "isic_drivers", "isic_station"},
}
# The one exception: the station finds the shipped model through isic_model's package root, which
# imports nothing (checked below), so the exception cannot pull the training code onto a board.
SHIPPED_MODEL_LOCATION = "isic_model"


def our_modules() -> Dict[str, Path]:
    """Dotted module name -> source file, for every module of our packages."""
    modules = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = our_modules()


def _type_checking_only(tree: ast.AST) -> Set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (no import at run time)."""
    guarded: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for child in node.body:
                guarded.update(id(n) for n in ast.walk(child))
    return guarded


def imports_of(module: str, runtime_only: bool = False) -> Iterator[Tuple[int, str]]:
    """(line, imported module) for each import of `module`; `from a import b` gives a.b when that is a module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_only(tree) if runtime_only else set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else base


def test_the_source_tree_is_found() -> None:
    top = {name.split(".")[0] for name in MODULES}
    assert top == set(MAY_IMPORT), top
    assert "isic_drivers.obp.codec" in MODULES and "isic_common.errors" in MODULES


def test_no_module_under_drivers_imports_the_station() -> None:
    offenders = [f"{MODULES[m].relative_to(REPO)}:{line} imports {target}"
                 for m in MODULES if MODULES[m].is_relative_to(REPO / "drivers")
                 for line, target in imports_of(m) if target.split(".")[0] in ("isic_station", "isic_model",
                                                                               "isic_plant")]
    assert not offenders, "drivers/ must not know the daemon:\n" + "\n".join(offenders)


def test_every_package_imports_only_the_layers_below_it() -> None:
    offenders = []
    for module in MODULES:
        own = module.split(".")[0]
        for line, target in imports_of(module):
            other = target.split(".")[0]
            if other == own or other not in MAY_IMPORT or other in MAY_IMPORT[own]:
                continue
            if own == "isic_station" and target == SHIPPED_MODEL_LOCATION:
                continue
            offenders.append(f"{MODULES[module].relative_to(REPO)}:{line}: {own} imports {target}")
    assert not offenders, "\n".join(offenders)
    assert [t for _, t in imports_of(SHIPPED_MODEL_LOCATION) if t.split(".")[0] in MAY_IMPORT] == []


def import_cycles() -> List[List[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    graph = {m: sorted({t for _, t in imports_of(m, runtime_only=True) if t in MODULES}) for m in MODULES}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_there_is_no_import_cycle_among_our_modules() -> None:
    cycles = import_cycles()
    assert not cycles, "import cycles (each line: modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from isic_common.errors import ConfigError\n", ["isic_common.errors"]),
    ("from isic_common import errors\n", ["isic_common.errors"]),
    ("from . import codec\n", ["isic_drivers.obp.codec"]),
    ("def f():\n    import isic_station.config\n", ["isic_station.config"]),
])
def test_imports_are_read_as_python_resolves_them(tmp_path: Path, monkeypatch, source: str,
                                                  expected: List[str]) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(source, encoding="utf-8")
    monkeypatch.setitem(MODULES, "isic_drivers.obp.probe", probe)
    assert [t for _, t in imports_of("isic_drivers.obp.probe")] == expected


def test_a_planted_cycle_is_found_and_a_type_checking_import_is_not_one(tmp_path: Path, monkeypatch) -> None:
    for name, source in (("a", "import isic_common.planted_b\nimport isic_common.planted_c\n"),
                         ("b", "def f():\n    from isic_common import planted_a\n"),
                         ("c", "from typing import TYPE_CHECKING\n"
                                "if TYPE_CHECKING:\n    import isic_common.planted_a\n")):
        (tmp_path / f"planted_{name}.py").write_text(source, encoding="utf-8")
        monkeypatch.setitem(MODULES, f"isic_common.planted_{name}", tmp_path / f"planted_{name}.py")
    assert ["isic_common.planted_a", "isic_common.planted_b"] in import_cycles()
    assert not any("isic_common.planted_c" in cycle for cycle in import_cycles())


# isic_station's own sub-packages (ARCHITECTURE.md, "isic_station's layout"): tools/ stands on everything and
# nothing of the station stands on it; daemon/ is given its parts by nothing below it. The one exception: the
# acquirer takes the pipeline's job types (MeasureJob, MeasurementRefused) from daemon.pipeline.
STATION_LOWER = ("isic_station.acquisition", "isic_station.messaging", "isic_station.inference",
                 "isic_station.preprocess", "isic_station.schemas")
STATION_EXCEPTIONS = {("isic_station.acquisition.acquirer", "isic_station.daemon.pipeline")}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_station_sub_packages_keep_their_layers() -> None:
    offenders = []
    for module in MODULES:
        if not _under(module, "isic_station"):
            continue
        for line, target in imports_of(module, runtime_only=True):
            if _under(target, "isic_station.tools") and not _under(module, "isic_station.tools"):
                offenders.append(f"{module}:{line} imports the tools' {target}")
            lower = any(_under(module, p) for p in STATION_LOWER) or module.count(".") == 1
            if lower and _under(target, "isic_station.daemon") and (module, target) not in STATION_EXCEPTIONS:
                offenders.append(f"{module}:{line} imports the daemon's {target}")
    assert not offenders, "\n".join(offenders)
