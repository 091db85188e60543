"""The package's architecture, checked: layers import downward only, no import cycles,
no private names reached across modules, aioquic's private API confined to one module.

The layer map below is the single source of truth.  Everything else in this file only
reads ``asgi_p2p/**/*.py`` with :mod:`ast` (asgi_p2p is never imported), so it runs in
well under a second.  Run it as a script for a report with counts::

    python tests/test_layers.py
"""

from __future__ import annotations

import ast
import functools
import sys
import textwrap
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------
# THE LAYER MAP -- lowest layer first.
#
# A module may import any module of a lower layer.  Inside its own layer it may import
# modules of its own group only, plus the group-to-group edges in SAME_LAYER_ALLOWED.
# "pkg.*" means the package pkg (its __init__) and every module below it; a plain name
# means that one module.  Entries that match no module are fine (e.g. asgi_p2p.node
# before it exists); a module that matches no entry fails the test.
# ---------------------------------------------------------------------------------------
# fmt: off
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # layer        group             modules
    ("foundation", "core",           ("asgi_p2p.errors", "asgi_p2p.config", "asgi_p2p.identity", "asgi_p2p.ticket")),
    ("foundation", "aioquic_compat", ("asgi_p2p.aioquic_compat",)),  # no asgi_p2p imports: COMPAT_MAY_IMPORT
    ("net",        "net",            ("asgi_p2p.net.*",)),
    ("paths",      "paths",          ("asgi_p2p.paths.*",)),
    ("endpoint",   "endpoint",       ("asgi_p2p.endpoint.*",)),
    ("services",   "messages",       ("asgi_p2p.messages",)),
    ("services",   "discovery",      ("asgi_p2p.discovery.*",)),
    ("services",   "http",           ("asgi_p2p.http.*",)),
    ("services",   "protocols",      ("asgi_p2p.protocols",)),  # may import messages: SAME_LAYER_ALLOWED
    ("relay",      "relay",          ("asgi_p2p.relay.*",)),  # the relay server hosts a discovery directory
    ("node",       "node",           ("asgi_p2p.node",)),  # assembly: endpoint + message service + relay client
    ("apps",       "gateway",        ("asgi_p2p.gateway.*",)),  # proxy / gateway / file transfer over a Node
    ("apps",       "ops",            ("asgi_p2p.ops.*",)),  # metrics, health, admin socket, pairing
    ("sim",        "sim",            ("asgi_p2p.sim.*",)),
    ("cli",        "cli",            ("asgi_p2p.cli.*", "asgi_p2p", "asgi_p2p.__main__")),
)
# fmt: on

# Imports between different groups of one layer that are allowed (importer group, imported group).
SAME_LAYER_ALLOWED: frozenset[tuple[str, str]] = frozenset({("protocols", "messages")})

# The only top-level packages asgi_p2p.aioquic_compat may import (besides the standard library).
COMPAT_MODULE = "asgi_p2p.aioquic_compat"
COMPAT_MAY_IMPORT = frozenset({"aioquic", "cryptography", "pylsqpack"})

# aioquic modules every other module may import from (public names only).
AIOQUIC_PUBLIC_MODULES = frozenset(
    {
        "aioquic.buffer",
        "aioquic.h3.connection",
        "aioquic.h3.events",
        "aioquic.quic.configuration",
        "aioquic.quic.connection",
        "aioquic.quic.events",
        "aioquic.quic.logger",
        "aioquic.quic.packet",
    }
)

# Private names of the standard library or third-party packages that library code may
# still use, keyed by (file, private name) -> why.  An entry that matches nothing fails
# the test: remove it when the use goes.
PRIVATE_ALLOWED: dict[tuple[str, str], str] = {
    ("asgi_p2p/cli/_common.py", "_ArgumentGroup"): (
        "argparse has no public name for the type add_argument_group() returns; used in annotations only"
    ),
    ("asgi_p2p/sim/determinism.py", "anyio._backends._asyncio"): (
        "anyio has no public hook for its worker threads; the simulator runs them inline (patch documented there)"
    ),
    ("asgi_p2p/sim/tcp.py", "httpcore._backends.anyio"): (
        "httpcore polls a pooled connection's file descriptor before reuse; simulated TCP has none, so the "
        "simulator answers for its own sockets (patch documented in asgi_p2p/sim/tcp.py)"
    ),
    ("asgi_p2p/sim/determinism.py", "_last_timestamp"): (
        "uuid.uuid1() keeps its last timestamp in this module global; a simulation swaps in its own and restores it"
    ),
    **{
        ("asgi_p2p/cli/settings.py", name): (
            "argparse has no public API to list a parser's actions and groups or tell their kinds; "
            "the settings (ASGI_P2P_* variables, config keys) are derived from them"
        )
        for name in (
            "_actions",
            "_mutually_exclusive_groups",
            "_group_actions",
            "_AppendAction",
            "_CountAction",
            "_SubParsersAction",
        )
    },
    ("asgi_p2p/sim/loop.py", "_fut_waiter"): (
        "asyncio.Task has no public accessor for the future it awaits; read for deadlock reports only, with a default"
    ),
}

# Names that start with "_" but are public API of the standard library.
PUBLIC_UNDERSCORE_NAMES = frozenset({"_asdict", "_replace", "_fields", "_make", "_field_defaults"})

# Modules exempt from the private-name checks: this one exists to touch aioquic's privates.
PRIVATE_EXEMPT = frozenset({COMPAT_MODULE})

# ---------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "asgi_p2p"


@dataclass(frozen=True)
class Module:
    name: str  # asgi_p2p.http.client
    path: str  # asgi_p2p/http/client.py (relative to the repository)
    is_package: bool  # an __init__.py
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    importer: Module
    line: int
    target: str  # a module name, internal or external
    names: tuple[str, ...]  # names taken from target by "from target import ..." (empty for a module)
    context: str  # "top", "TYPE_CHECKING" or "deferred" (inside a function)

    @property
    def where(self) -> str:
        return f"{self.importer.path}:{self.line}"

    @property
    def internal(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(PACKAGE + ".")

    @property
    def edge(self) -> str:
        what = f" ({', '.join(self.names)})" if self.names else ""
        ctx = "" if self.context == "top" else f" [{self.context}]"
        return f"{self.importer.name} -> {self.target}{what}{ctx}"

    def describe(self) -> str:
        return f"{self.where}: {self.edge}"


@dataclass(frozen=True)
class Finding:
    where: str  # file:line
    name: str  # the private name (key of PRIVATE_ALLOWED), or "" for layer findings
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# --- reading the package ---------------------------------------------------------------


@functools.cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT)
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        found[name] = Module(name, rel.as_posix(), is_package, tree)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_with_context(node: ast.AST, context: str = "top") -> Iterator[tuple[ast.AST, str]]:
    """Every node below ``node`` with where it runs: at import, for type checkers only, or later."""
    for child in ast.iter_child_nodes(node):
        yield child, context
        inner = context
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "deferred"
        elif isinstance(child, ast.If) and context == "top" and _is_type_checking(child.test):
            # only the body is for type checkers; an else branch runs
            for sub in child.body:
                yield sub, "TYPE_CHECKING"
                yield from _walk_with_context(sub, "TYPE_CHECKING")
            for sub in child.orelse:
                yield sub, context
                yield from _walk_with_context(sub, context)
            continue
        yield from _walk_with_context(child, inner)


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: Module, known: Collection[str]) -> list[Import]:
    """Every import statement of ``module``, one Import per imported module.

    ``from pkg import name`` is an import of ``pkg.name`` when that is a known module
    (``from . import x``, ``from .http import client``), else of ``pkg``.
    """
    found: list[Import] = []
    for node, context in _walk_with_context(module.tree):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name, (), context) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            if base == "__future__":
                continue
            plain: list[str] = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.append(Import(module, node.lineno, sub, (), context))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(module, node.lineno, base, tuple(plain), context))
    return found


@functools.cache
def imports() -> tuple[Import, ...]:
    known = modules()
    return tuple(imp for module in known.values() for imp in imports_of(module, known))


def _by_place(finding: Finding) -> tuple[str, int]:
    file, _, line = finding.where.rpartition(":")
    return file, int(line)


# --- the layer map, applied --------------------------------------------------------------


def _matches(pattern: str, name: str) -> bool:
    if pattern.endswith(".*"):
        stem = pattern[:-2]
        return name == stem or name.startswith(stem + ".")
    return name == pattern


@functools.cache
def placement(name: str) -> tuple[int, str, str] | None:
    """(layer index, layer name, group) of a module, or None when the map lacks it."""
    layer_names = list(dict.fromkeys(layer for layer, _, _ in LAYERS))
    for layer, group, patterns in LAYERS:
        if any(_matches(p, name) for p in patterns):
            return layer_names.index(layer), layer, group
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def unmapped_modules() -> list[str]:
    return [f"{m.path}: {m.name}" for m in modules().values() if placement(m.name) is None]


def unresolved_imports() -> list[str]:
    known = modules()
    return [f"{imp.describe()}: no such module" for imp in imports() if imp.internal and imp.target not in known]


def layer_violations() -> list[Finding]:
    """(a) upward imports, same-layer imports between groups, imports of a parent package."""
    found: list[Finding] = []
    for imp in imports():
        src, dst = placement(imp.importer.name), placement(imp.target)
        if not imp.internal or imp.target == imp.importer.name or src is None or dst is None:
            continue
        if imp.target in _ancestors(imp.importer.name):
            why = f"imports its parent package {imp.target} (import from the defining module instead)"
        elif dst[0] > src[0]:
            why = f"upward: layer {src[1]} imports layer {dst[1]}"
        elif dst[0] == src[0] and src[2] != dst[2] and (src[2], dst[2]) not in SAME_LAYER_ALLOWED:
            why = f"same layer {src[1]}: group {src[2]} may not import group {dst[2]}"
        else:
            continue
        found.append(Finding(imp.where, "", f"{imp.edge}: {why}"))
    return sorted(found, key=_by_place)


# --- cycles --------------------------------------------------------------------------------


def import_graph() -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {name: {} for name in modules()}
    for imp in imports():
        if imp.internal and imp.target in graph and imp.target != imp.importer.name:
            graph[imp.importer.name].setdefault(imp.target, []).append(imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


CYCLE_LIMIT = 10_000  # stop counting simple cycles here (their number can grow exponentially)


def _elementary_cycles(graph: dict[str, dict[str, list[Import]]], component: list[str]) -> list[list[str]]:
    """The simple cycles inside one strongly connected component (at most CYCLE_LIMIT), each
    starting from its smallest module."""
    members = set(component)
    cycles: list[list[str]] = []
    for start in component:
        if len(cycles) >= CYCLE_LIMIT:
            break
        allowed = {m for m in members if m >= start}
        path = [start]
        work: list[Iterator[str]] = [iter(sorted(t for t in graph[start] if t in allowed))]
        while work:
            nxt = next(work[-1], None)
            if nxt is None:
                work.pop()
                path.pop()
            elif nxt == start:
                cycles.append([*path, start])
                if len(cycles) >= CYCLE_LIMIT:
                    break
            elif nxt not in path:
                path.append(nxt)
                work.append(iter(sorted(t for t in graph[nxt] if t in allowed)))
    return cycles


@dataclass(frozen=True)
class Cycle:
    modules: list[str]  # a strongly connected group of modules
    example: list[str]  # its shortest cycle
    elementary: int  # how many simple cycles run through it
    edges: list[Import]  # every import inside the group

    def __str__(self) -> str:
        lines = [
            f"{len(self.modules)} modules import each other in a cycle ({self.count} simple cycles),"
            f" e.g. {' -> '.join(self.example)}",
            "  imports inside the group (break one per cycle):",
        ]
        lines += [f"    {imp.describe()}" for imp in self.edges]
        return "\n".join(lines)

    @property
    def count(self) -> str:
        return f"{self.elementary}{'+' if self.elementary >= CYCLE_LIMIT else ''}"


def import_cycles() -> list[Cycle]:
    """(b) every group of modules that import each other, directly or not."""
    graph = import_graph()
    found: list[Cycle] = []
    for component in _strongly_connected(graph):
        cycles = _elementary_cycles(graph, component)
        edges = [
            imp for src in component for dst, imps in sorted(graph[src].items()) if dst in component for imp in imps
        ]
        found.append(Cycle(component, min(cycles, key=len), len(cycles), edges))
    return found


# --- private names ---------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    """``_x`` but not ``__x__`` and not public-by-convention (namedtuple's ``_replace``...)."""
    return (
        name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))
        and (name not in PUBLIC_UNDERSCORE_NAMES)
    )


def _private_module_owner(target: str) -> str | None:
    """The package that owns ``target`` as a private module (``a._b.c`` -> ``a``), or None."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def _is_self_like(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return expr.id in ("self", "cls")
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "super"


@functools.cache
def _defined_names(module: Module) -> frozenset[str]:
    """Names a module defines: functions, classes, assigned names, attributes stored on self/cls."""
    names: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_self_like(node.value):
            names.add(node.attr)
    return frozenset(names)


def _attribute_reaches(module: Module) -> Iterator[tuple[int, str, str]]:
    """``expr._x`` (and ``getattr(expr, "_x")``) on something other than self/cls/super()."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute):
            expr, attr = node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            expr, attr = node.args[0], node.args[1].value
        else:
            continue
        if _is_private(attr) and not _is_self_like(expr) and attr not in _defined_names(module):
            yield node.lineno, attr, f"{ast.unparse(expr)}.{attr}"


def private_reaches() -> list[Finding]:
    """(c) private names used across modules, before the allow-list."""
    found: list[Finding] = []
    for imp in imports():
        mod = imp.importer
        if mod.name in PRIVATE_EXEMPT:
            continue
        owner = _private_module_owner(imp.target)
        if owner is not None and not (mod.name == owner or mod.name.startswith(owner + ".")):
            found.append(
                Finding(imp.where, imp.target, f"{mod.name} imports private module {imp.target} from outside {owner}")
            )
        for name in imp.names:
            if _is_private(name):
                found.append(Finding(imp.where, name, f"{mod.name} imports private name {name} from {imp.target}"))
    for mod in modules().values():
        if mod.name in PRIVATE_EXEMPT:
            continue
        for line, attr, text in _attribute_reaches(mod):
            found.append(Finding(f"{mod.path}:{line}", attr, f"reaches {text}, which {mod.path} does not define"))
    return sorted(found, key=_by_place)


def _allow_key(finding: Finding) -> tuple[str, str]:
    return finding.where.rpartition(":")[0], finding.name


def private_violations() -> list[Finding]:
    return [f for f in private_reaches() if _allow_key(f) not in PRIVATE_ALLOWED]


def stale_private_allowances() -> list[str]:
    used = {_allow_key(f) for f in private_reaches()}
    return [f"{file}: {name}" for file, name in PRIVATE_ALLOWED if (file, name) not in used]


# --- aioquic ------------------------------------------------------------------------------


def aioquic_violations() -> list[str]:
    """(d) outside aioquic_compat: aioquic's public modules and names only."""
    found: list[str] = []
    for imp in imports():
        top = imp.target.partition(".")[0]
        if top != "aioquic" or imp.importer.name == COMPAT_MODULE:
            continue
        names = imp.names or ("",)
        for name in names:
            full = f"{imp.target}.{name}" if name else imp.target
            if _private_module_owner(full) is not None:
                found.append(f"{imp.describe()}: {full} is aioquic's private API: use {COMPAT_MODULE}")
            elif imp.target not in AIOQUIC_PUBLIC_MODULES and full not in AIOQUIC_PUBLIC_MODULES:
                found.append(f"{imp.describe()}: {full} is not in AIOQUIC_PUBLIC_MODULES: use {COMPAT_MODULE}")
    return found


def compat_dependency_violations() -> list[str]:
    stdlib = sys.stdlib_module_names
    return [
        f"{imp.describe()}: {COMPAT_MODULE} may import only {', '.join(sorted(COMPAT_MAY_IMPORT))} and the stdlib"
        for imp in imports()
        if imp.importer.name == COMPAT_MODULE
        and (top := imp.target.partition(".")[0]) not in COMPAT_MAY_IMPORT
        and top not in stdlib
    ]


# --- the tests -------------------------------------------------------------------------------


def _fail_message(title: str, items: list[str]) -> str:
    return f"{title} ({len(items)}):\n" + "\n".join(f"  {item}" for item in items)


def _fail_if_any(title: str, items: list[str]) -> None:
    if items:
        pytest.fail(_fail_message(title, items), pytrace=False)


def test_every_module_is_in_the_layer_map() -> None:
    _fail_if_any("modules missing from the map: add them to LAYERS in tests/test_layers.py", unmapped_modules())


def test_internal_imports_resolve() -> None:
    _fail_if_any("imports of asgi_p2p modules that do not exist", unresolved_imports())


def test_imports_go_down_the_layers() -> None:
    _fail_if_any("imports against the layer map (tests/test_layers.py LAYERS)", [str(f) for f in layer_violations()])


def test_no_import_cycles() -> None:
    _fail_if_any("import cycles (TYPE_CHECKING and deferred imports count)", [str(c) for c in import_cycles()])


def test_no_private_names_across_modules() -> None:
    _fail_if_any(
        "private names used outside their module (stdlib/3rd-party: add to PRIVATE_ALLOWED with a reason)",
        [str(f) for f in private_violations()],
    )


def test_private_allow_list_is_not_stale() -> None:
    _fail_if_any("PRIVATE_ALLOWED entries that match nothing: remove them", stale_private_allowances())


def test_aioquic_private_api_only_in_compat() -> None:
    _fail_if_any(f"aioquic used past its public API outside {COMPAT_MODULE}", aioquic_violations())


def test_aioquic_compat_imports_only_its_dependencies() -> None:
    _fail_if_any(f"{COMPAT_MODULE} imports", compat_dependency_violations())


# --- the checker, checked on made-up modules ------------------------------------------------


def _made_up(name: str, source: str, *, is_package: bool = False) -> Module:
    path = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    return Module(name, path, is_package, ast.parse(textwrap.dedent(source)))


def test_checker_resolves_every_kind_of_import() -> None:
    known = {"asgi_p2p", "asgi_p2p.errors", "asgi_p2p.endpoint", "asgi_p2p.http", "asgi_p2p.http.client"}
    known |= {"asgi_p2p.http._wsframe", "asgi_p2p.http.websocket"}
    websocket = _made_up(
        "asgi_p2p.http.websocket",
        """
        from __future__ import annotations
        import typing
        from . import _wsframe as ws
        from .. import errors, Thing
        from ..http import client
        from .client import connect
        if typing.TYPE_CHECKING:
            from ..endpoint import Endpoint
        else:
            import json
        def later() -> None:
            import asgi_p2p.errors
        """,
    )
    assert [(i.line, i.target, i.names, i.context) for i in imports_of(websocket, known)] == [
        (3, "typing", (), "top"),
        (4, "asgi_p2p.http._wsframe", (), "top"),
        (5, "asgi_p2p.errors", (), "top"),
        (5, "asgi_p2p", ("Thing",), "top"),
        (6, "asgi_p2p.http.client", (), "top"),
        (7, "asgi_p2p.http.client", ("connect",), "top"),
        (9, "asgi_p2p.endpoint", ("Endpoint",), "TYPE_CHECKING"),
        (11, "json", (), "top"),
        (13, "asgi_p2p.errors", (), "deferred"),
    ]
    package = _made_up("asgi_p2p.http", "from . import client\nfrom .client import X\n", is_package=True)
    assert [i.target for i in imports_of(package, known)] == ["asgi_p2p.http.client"] * 2


def test_checker_finds_cycles() -> None:
    edges = {"a": ["b"], "b": ["c", "a"], "c": ["a"], "d": ["a"], "e": ["e"]}
    graph: dict[str, dict[str, list[Import]]] = {src: {dst: [] for dst in dsts} for src, dsts in edges.items()}
    assert _strongly_connected(graph) == [["a", "b", "c"]]  # self-imports are left out of the graph
    assert _elementary_cycles(graph, ["a", "b", "c"]) == [["a", "b", "a"], ["a", "b", "c", "a"]]


def test_checker_finds_private_reaches() -> None:
    module = _made_up(
        "m",
        """
        class A:
            _shared = 1
            def f(self, other, point):
                self._own = other._own + other._shared + super()._base + type(self)._kind
                return other._theirs, getattr(other, "_hidden"), point._replace(x=1), other.__dict__
        """,
    )
    assert [name for _, name, _ in _attribute_reaches(module)] == ["_kind", "_theirs", "_hidden"]


# --- the report --------------------------------------------------------------------------------


def report() -> str:
    layers = layer_violations()
    cycles = import_cycles()
    private = private_violations()
    sections = [
        ("modules missing from the layer map", unmapped_modules()),
        ("unresolved internal imports", unresolved_imports()),
        ("layer violations", [str(f) for f in layers]),
        ("import cycles", [str(c) for c in cycles]),
        ("private reaches", [str(f) for f in private]),
        ("stale PRIVATE_ALLOWED entries", stale_private_allowances()),
        ("aioquic past its public API outside aioquic_compat", aioquic_violations()),
        ("aioquic_compat dependencies", compat_dependency_violations()),
    ]
    out = [_fail_message(title, items) for title, items in sections if items]
    upward = sum("upward:" in f.message for f in layers)
    parent = sum("parent package" in f.message for f in layers)
    out.append(
        f"modules: {len(modules())}, imports of asgi_p2p modules: {sum(i.internal for i in imports())}\n"
        f"upward imports: {len(layers)} ({upward} to a higher layer, {parent} of a parent package,"
        f" {len(layers) - upward - parent} between groups of one layer)\n"
        f"cycles: {len(cycles)} groups of modules, {sum(c.elementary for c in cycles)} simple cycles\n"
        f"private reaches: {len(private)} (plus {len(PRIVATE_ALLOWED)} allowed)\n"
        f"aioquic outside aioquic_compat: {len(aioquic_violations())}"
    )
    return "\n\n".join(out)


if __name__ == "__main__":
    print(report())
