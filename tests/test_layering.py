"""The package's import layering, checked on the source (AST) so it cannot drift back (issue #24).

Imports flow one way. Read as *imports* (not as the data flow the README draws), the layers of
``src/cds_engine`` are, bottom to top — a module may import only from its own layer or a lower one:

 0. ``codes`` (shared value types: ``Coding``), ``term_context``, ``files``, ``metrics`` (the
    Prometheus metric declarations every layer counts into) — import nothing of ours
 1. ``vocabulary`` — code lists; needs ``Coding``, never the fact model
 2. ``facts`` — the fact model and ``derive()``
 3. ``sources``, ``synthetic`` — build facts (so they import the fact model; facts never import them)
 4. ``rules`` — the rule language and its compilers (schema, compile, conditions, rete, …); must
    import nothing from the engine, results, alerts or messages
 5. ``alerts``, ``messages`` — the alert model and the wording of alert text
 6. ``results``, ``evaluation`` — tier outcomes to alerts, shared by every evaluator
 7. ``engine``, ``evaluators`` (the polars vector evaluator)
 8. ``store`` — persistence; knows no web layer (the service mounts the review pages over it)
 9. ``batch`` — screening runs (writes to the store)
10. ``authoring`` — lint/verify, fixtures, shadow runs, catalog (uses the engine; shadow reads
    prescriber shorthand with ``batch.order_text``)
11. ``service`` — CDS Hooks app, review pages, hot reload (``service.reload`` vets a pack with
    ``authoring.verify`` before swapping engines)
12. ``commands`` — the CLI's sub-commands (wiring only)
13. ``cli`` and the package facade ``cds_engine/__init__.py`` (re-exports the public API)

A module under ``src/cds_engine`` that no layer names fails the test: give it a layer here.
``detected_issue`` (the FHIR DetectedIssue rendering of an alert) sits with ``results``.

Choices, written down:

* Imports inside ``if TYPE_CHECKING:`` create no run-time import, so they are left out of the
  cycle check, but they must still respect the layer order (a type-only import may not point up).
* Imports inside functions (lazy imports) count like any other: they are real dependencies.
* ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module; an import of a
  module's own ancestor package (``from cds_engine.store import open_store`` inside the store) is
  not an edge, because Python has always imported the ancestors already.
* Cycles are checked between modules and between the top-level units (``cds_engine.store`` vs
  ``cds_engine.service``), so a cycle through two packages is found even when no two single
  modules import each other.
* The README states the same order ("How it works") and its layout table names only files that
  exist; both are checked here so the picture cannot drift from the code either.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cds_engine"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("codes", "term_context", "files", "metrics", "cpu_affinity", "allocator"),
    ("vocabulary",),
    ("facts",),
    ("sources", "synthetic"),
    ("rules",),
    ("alerts", "messages"),
    ("results", "evaluation", "detected_issue"),
    ("engine", "evaluators"),
    ("store",),
    ("batch",),
    ("authoring",),
    ("service",),
    ("commands",),
    ("cli", ""),  # "" is the package facade cds_engine/__init__.py
)


@dataclass(frozen=True)
class Edge:
    """One import of one of our modules by another: where it is written and whether it is type-only."""

    source: str
    target: str
    file: Path
    line: int
    type_only: bool

    def where(self) -> str:
        try:
            shown = self.file.relative_to(SRC.parent)
        except ValueError:
            shown = self.file
        return f"{shown}:{self.line}"


def module_names(src: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` under ``src/package``."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement with its line and whether it sits under ``if TYPE_CHECKING:``."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self._type_only = 0

    def visit_If(self, node: ast.If) -> None:
        if _type_checking_test(node.test):
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._type_only > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._type_only > 0))


def import_edges(src: Path, package: str = PACKAGE) -> list[Edge]:
    """Every import of one of our modules (relative imports resolved), one edge per imported module."""
    modules = module_names(src, package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: list[Edge] = []
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for node, type_only in visitor.found:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for alias in node.names:
                    full = f"{origin}.{alias.name}"
                    targets.append(full if full in modules else origin)
            for target in targets:
                resolved = known(target)
                if resolved is None or resolved == name or resolved in ancestors:
                    continue
                edges.append(Edge(name, resolved, path, node.lineno, type_only))
    return edges


def layer_of(module: str, package: str = PACKAGE) -> int | None:
    """The index in :data:`LAYERS` of a module (by its top-level unit), or None when undeclared."""
    unit = module[len(package) + 1:].split(".")[0] if module != package else ""
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    return None


def _layer_label(index: int) -> str:
    return "/".join(unit or "cds_engine (facade)" for unit in LAYERS[index])


def layer_violations(edges: list[Edge], modules: dict[str, tuple[Path, bool]],
                     package: str = PACKAGE) -> list[str]:
    """Each upward import as ``file:line: a imports b — layer … is above …``; each module in no layer."""
    out = [f"{path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path}: module {name} "
           "is in no layer: add its top-level unit to LAYERS in tests/test_layering.py"
           for name, (path, _) in sorted(modules.items()) if layer_of(name, package) is None]
    for edge in edges:
        low, high = layer_of(edge.source, package), layer_of(edge.target, package)
        if low is None or high is None or high <= low:
            continue
        kind = " (type-only)" if edge.type_only else ""
        out.append(f"{edge.where()}: {edge.source} imports {edge.target}{kind} — layer "
                   f"'{_layer_label(high)}' is above layer '{_layer_label(low)}'; imports flow one way "
                   "(move the shared piece down, or the importing code up)")
    return sorted(set(out))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _unit(module: str, package: str) -> str:
    return ".".join(module.split(".")[:2]) if module != package else package


def import_cycles(edges: list[Edge], package: str = PACKAGE) -> list[str]:
    """Each run-time cycle, between modules or between top-level units, with the imports that close it."""
    out: list[str] = []
    for level, key in (("modules", lambda m: m), ("packages", lambda m: _unit(m, package))):
        graph: dict[str, set[str]] = defaultdict(set)
        where: dict[tuple[str, str], list[Edge]] = defaultdict(list)
        for edge in edges:
            if edge.type_only:
                continue
            a, b = key(edge.source), key(edge.target)
            if a != b:
                graph[a].add(b)
                graph.setdefault(b, set())
                where[(a, b)].append(edge)
        for component in _cycles(graph):
            members = set(component)
            links = [f"{e.where()}: {e.source} imports {e.target}"
                     for (a, b), found in sorted(where.items()) if a in members and b in members
                     for e in found[:1]]
            head = f"import cycle between {level} {' <-> '.join(component)}:"
            out.append("\n    ".join([head, *links]))
    return out


# ───────────────────────── the checks on the real package ─────────────────────────


def test_no_import_cycle() -> None:
    cycles = import_cycles(import_edges(SRC))
    assert not cycles, "import cycles (imports must flow one way):\n" + "\n".join(cycles)


def test_imports_follow_the_layers() -> None:
    problems = layer_violations(import_edges(SRC), module_names(SRC))
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_rule_language_imports_nothing_from_the_engine_side() -> None:
    """Issue #24's own wording, checked by name so a reordering of LAYERS cannot loosen it."""
    banned = ("engine", "evaluators", "results", "evaluation", "alerts", "messages", "authoring",
              "service", "store", "batch", "commands")
    bad = [f"{e.where()}: {e.source} imports {e.target}" for e in import_edges(SRC)
           if e.source.startswith(f"{PACKAGE}.rules") and _unit(e.target, PACKAGE).split(".")[-1] in banned]
    assert not bad, "the rule language must not import the engine side:\n" + "\n".join(bad)


def test_store_knows_no_web_layer() -> None:
    bad = [f"{e.where()}: {e.source} imports {e.target}" for e in import_edges(SRC)
           if e.source.startswith(f"{PACKAGE}.store") and e.target.startswith(f"{PACKAGE}.service")]
    store_files = sorted((SRC / PACKAGE / "store").rglob("*.py"))
    bad += [f"{path.relative_to(SRC.parent)}: imports fastapi/starlette" for path in store_files
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                   any((getattr(n, "module", None) or alias.name).split(".")[0] in {"fastapi", "starlette"}
                       for alias in n.names)
                   for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    message = "the store must know no web layer (the service mounts the review pages):\n"
    assert not bad, message + "\n".join(bad)


def _readme_section(title: str) -> str:
    text = (SRC.parent / "README.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else len(text)]


def test_readme_states_the_same_layer_order() -> None:
    """The README's "Imports run one way" sentence lists the layers in this test's order, all of them."""
    section = _readme_section("## How it works")
    paragraph = section[section.index("Imports run one way"):].split("\n\n")[0]
    units = {p.stem for p in (SRC / PACKAGE).glob("*.py") if p.stem != "__init__"}
    units |= {p.parent.name for p in (SRC / PACKAGE).glob("*/__init__.py")}
    named = [w for w in re.findall(r"`([a-z_]+)`", paragraph) if w in units]
    assert named == [u for layer in LAYERS for u in layer if u], (
        "README.md 'How it works' lists the import layers as\n  " + " ".join(named) +
        "\nbut tests/test_layering.py LAYERS says\n  " + " ".join(u for layer in LAYERS for u in layer if u))


def test_readme_layout_table_names_files_that_exist() -> None:
    """Every path and ``*.py`` the README's layout table names for ``src/cds_engine`` is where it says."""
    package = SRC / PACKAGE
    missing: list[str] = []
    for row in _readme_section("## Layout").splitlines():
        cells = row.split("|")
        if len(cells) < 4 or "src/cds_engine" not in cells[1]:
            continue
        paths = re.findall(r"`(src/cds_engine/[^`]*)`", cells[1])
        bases = [package] + [SRC.parent / p for p in paths if p.endswith("/")]
        missing += [p for p in paths if not (SRC.parent / p).exists()]
        for name in re.findall(r"`([\w/]+\.py)`", cells[2]):
            if not any((base / name).is_file() for base in bases):
                missing.append(f"{name} (row {cells[1].strip()})")
    assert not missing, "README.md layout table names files that do not exist:\n" + "\n".join(missing)


# ───────────────────────── the checker finds what it must ─────────────────────────


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_names_an_upward_import_by_file_and_line(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "alerts.py": "",
        "rules/__init__.py": "",
        "rules/governance.py": '"""doc"""\n\nfrom cds_engine.alerts import Alert\n',
    })
    problems = layer_violations(import_edges(src), module_names(src))
    assert len(problems) == 1
    assert "rules/governance.py:3: cds_engine.rules.governance imports cds_engine.alerts" in problems[0]
    assert "'alerts/messages' is above layer 'rules'" in problems[0]


def test_checker_holds_type_only_imports_to_the_layers_but_not_to_cycles(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "engine.py": "",
        "rules/__init__.py": "",
        "rules/compile.py": "from cds_engine.rules import one_click\n",
        "rules/one_click.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from cds_engine.rules.compile import CompiledPack\n"
                               "    from cds_engine.engine import Engine\n"),
    })
    edges = import_edges(src)
    assert import_cycles(edges) == []  # compile <-> one_click only through TYPE_CHECKING
    problems = layer_violations(edges, module_names(src))
    assert [p.split(": ", 1)[0].endswith("rules/one_click.py:4") for p in problems] == [True]
    assert "(type-only)" in problems[0]


def test_checker_finds_a_cycle_through_two_packages_and_lazy_imports(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "store/__init__.py": "from cds_engine.store.store import Store\n",
        "store/store.py": ("def router():\n    from ..service.review import build_router\n"
                           "    return build_router\n"),
        "service/__init__.py": "",
        "service/review.py": "from cds_engine.store import store\n",
    })
    edges = import_edges(src)
    cycles = import_cycles(edges)
    assert cycles and "cds_engine.service.review <-> cds_engine.store.store" in cycles[0]
    assert "store/store.py:2: cds_engine.store.store imports cds_engine.service.review" in cycles[0]
    assert any("packages cds_engine.service <-> cds_engine.store" in c for c in cycles)
    problems = layer_violations(edges, module_names(src))
    assert any("store/store.py:2" in p and "'service' is above layer 'store'" in p for p in problems)


def test_checker_rejects_a_module_in_no_layer(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"__init__.py": "", "gadgets.py": ""})
    problems = layer_violations(import_edges(src), module_names(src))
    assert len(problems) == 1 and "module cds_engine.gadgets is in no layer" in problems[0]


@pytest.mark.parametrize("unit", [u for layer in LAYERS for u in layer if u])
def test_every_declared_unit_exists(unit: str) -> None:
    """A layer entry that names nothing would hide a typo (and let a real module fall through)."""
    assert (SRC / PACKAGE / unit).is_dir() or (SRC / PACKAGE / f"{unit}.py").is_file(), unit
