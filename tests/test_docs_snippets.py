"""Every ```python (or ```py) block of README.md and docs/**/*.md runs as a test, so a stale snippet fails CI.

Blocks are numbered from 1 per file in document order: ``README.md[2]`` is README's second
python block.  Line numbers in tracebacks are those of the Markdown file.  How a block runs
is read from the block itself:

* a block defining ``def test_*`` functions (they use the ``sim`` fixture) is a test module:
  it runs under pytest in a subprocess, in a temporary directory;
* a block using what a reader supplies (the names ``ticket``, ``node_id``; or an uncalled
  ``main`` it defines, called with parameters of those names or ``ticket_text``) runs
  against a local HTTP/3 server serving :class:`TracksApp`, and must send it a request;
* any other block runs as is: with top-level ``await`` in a fresh event loop, else directly.

Nodes and relays a block leaves open are closed after it (even when it fails), simulations
too.  A block that cannot run (placeholders) is listed in :data:`COMPILE_ONLY` with the
reason and the names it leaves undefined: it is compiled, its imports run, and the
attributes and call signatures it takes from the imported names are checked.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_p2p import Endpoint, Node
from asgi_p2p.http import H3Server
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Simulation
from asgi_p2p.ticket import Ticket

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^( *)```(?:python|py)[ \t]*\n(.*?)^\1```", re.S | re.M)
TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
RUN_TIMEOUT = 20.0  # wall-clock seconds for a block run in this process
SUBPROCESS_TIMEOUT = 60.0  # wall-clock seconds for a block run under pytest in a subprocess

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class CompileOnly:
    reason: str
    undefined: frozenset[str]  # exactly the names the block uses without defining them


COMPILE_ONLY: dict[str, CompileOnly] = {
    "docs/http.md[1]": CompileOnly(
        reason="an API tour: placeholders (app, secret_key, client_node, node_addr, node_id), `...` bodies, "
        "a blocking client and a WebSocket peer it does not set up",
        undefined=frozenset({"app", "secret_key", "client_node", "node_addr", "node_id"}),
    ),
}


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to ROOT, "/"-separated
    index: int  # 1-based, per doc
    line: int  # line of the opening fence
    source: str  # dedented

    @property
    def id(self) -> str:
        return f"{self.doc}[{self.index}]"

    @property
    def filename(self) -> str:
        return str(ROOT / self.doc)

    @property
    def code(self) -> str:
        """The source, padded so that its line numbers are those of the Markdown file."""
        return "\n" * self.line + self.source


def extract_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        doc = path.relative_to(ROOT).as_posix()
        for index, match in enumerate(FENCE.finditer(text), 1):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(Block(doc, index, line, textwrap.dedent(match.group(2))))
    return blocks


BLOCKS = extract_blocks()


# -- reading a block ---------------------------------------------------------------------


def parse(block: Block) -> ast.Module:
    return ast.parse(block.code, block.filename)


def undefined_names(tree: ast.Module) -> set[str]:
    """Names the block reads but never binds (ignoring scopes: good enough for docs)."""
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def entry_point(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """A top-level ``main`` the block defines but never calls: the reader is to call it."""
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "main"]
    used = any(isinstance(n, ast.Name) and n.id == "main" and isinstance(n.ctx, ast.Load) for n in ast.walk(tree))
    return mains[-1] if mains and not used else None


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]]


def inputs_of(tree: ast.Module) -> set[str]:
    """What the block takes from its reader: the names it leaves undefined, the parameters of its entry point."""
    entry = entry_point(tree)
    return undefined_names(tree) | set(parameters(entry) if entry is not None else [])


def is_test_module(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_") for n in tree.body)


# -- the local server the reader's inputs point at ----------------------------------------

TRACKS = {"tracks": ["a", "b"]}
SERVED = frozenset({"ticket", "node_id", "ticket_text"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class TracksApp:
    """The ASGI app the blocks call: ``TRACKS`` as JSON on every path; records the paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http", scope["type"]
        self.paths.append(scope["path"])
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(TRACKS).encode()})


@asynccontextmanager
async def serve(app: TracksApp) -> AsyncIterator[Ticket]:
    """Serve ``app`` over HTTP/3 on a fresh node; yield the node's ticket."""
    node = await Node.bind()
    server = H3Server(app, node)
    try:
        await server.startup()
        try:
            yield Ticket.from_node_addr(node.node_addr())
        finally:
            await server.shutdown()
    finally:
        await node.close()


def served_inputs(ticket: Ticket) -> dict[str, Any]:
    return {"ticket": ticket, "node_id": ticket.node_id, "ticket_text": ticket.encode()}


# -- running a block ---------------------------------------------------------------------


def track_endpoints(monkeypatch: pytest.MonkeyPatch) -> list[Endpoint]:
    """Every endpoint (node, relay server's endpoint, ...) created from now on, in order."""
    created: list[Endpoint] = []
    init = Endpoint.__init__

    def tracking_init(self: Endpoint, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(Endpoint, "__init__", tracking_init)
    return created


async def close_left_open(namespace: dict[str, Any], endpoints: list[Endpoint]) -> None:
    """Close the relays left in the namespace, then every endpoint the block created, newest first.

    ``close`` is idempotent: closing what the block closed itself does nothing.
    """
    for value in reversed(list(namespace.values())):
        if isinstance(value, RelayServer):
            await value.close()
    for endpoint in reversed(endpoints):
        await endpoint.close()


async def run_async(block: Block, tree: ast.Module, code: Any, created: list[Endpoint]) -> None:
    """Run ``code`` in a fresh namespace; serve the inputs it takes (see :func:`inputs_of`)."""
    entry = entry_point(tree)
    inputs = inputs_of(tree)
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    app = TracksApp()
    async with asyncio.timeout(RUN_TIMEOUT), AsyncExitStack() as stack:
        values = served_inputs(await stack.enter_async_context(serve(app))) if inputs else {}
        namespace.update({name: values[name] for name in inputs & undefined_names(tree)})
        first = len(created)  # the endpoints before are the server's: serve() closes it after the block's
        try:
            await evaluate(eval(code, namespace))
            if entry is not None:
                await evaluate(namespace[entry.name](**{p: values[p] for p in parameters(entry)}))
        finally:
            await close_left_open(namespace, created[first:])
    if inputs:
        assert app.paths, f"{block.id} never sent a request to the server its {sorted(inputs)} point at"
    response = namespace.get("r")
    if isinstance(response, httpx.Response):
        assert response.status_code == 200, response


async def evaluate(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


def run_sync(code: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    try:
        exec(code, namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, Simulation):
                value.close()


def run_pytest(block: Block, tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error::pytest.PytestUnraisableExceptionWarning\n")
    test_file = tmp_path / ("test_" + re.sub(r"\W", "_", block.id) + ".py")
    test_file.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{block.id} failed under pytest:\n{result.stdout}{result.stderr}"


# -- compile-only blocks -----------------------------------------------------------------

_UNRESOLVED = object()


def resolve(expr: ast.expr, namespace: dict[str, Any], problems: list[str]) -> Any:
    """The object a dotted name rooted in an imported name denotes, else ``_UNRESOLVED``."""
    if isinstance(expr, ast.Name):
        return namespace.get(expr.id, _UNRESOLVED)
    if isinstance(expr, ast.Attribute):
        base = resolve(expr.value, namespace, problems)
        if base is _UNRESOLVED:
            return base
        if not hasattr(base, expr.attr):
            problems.append(f"line {expr.lineno}: {ast.unparse(expr)}: no attribute {expr.attr!r} on {base!r}")
            return _UNRESOLVED
        return getattr(base, expr.attr)
    return _UNRESOLVED


def check_call(call: ast.Call, namespace: dict[str, Any], problems: list[str]) -> None:
    """The arguments of a call to an imported callable must fit its signature."""
    func = resolve(call.func, namespace, [])  # attribute problems are reported once, by the walk
    if func is _UNRESOLVED or any(isinstance(a, ast.Starred) for a in call.args):
        return
    if any(k.arg is None for k in call.keywords):
        return
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*call.args, **{k.arg: k.value for k in call.keywords if k.arg is not None})
    except TypeError as exc:
        problems.append(f"line {call.lineno}: {ast.unparse(call)}: {exc}")


def check_compiles(block: Block, spec: CompileOnly) -> None:
    tree = parse(block)
    compile(tree, block.filename, "exec", flags=TOP_LEVEL_AWAIT)
    undefined = undefined_names(tree)
    assert undefined == spec.undefined, (
        f"{block.id} leaves undefined {sorted(undefined)}, COMPILE_ONLY lists {sorted(spec.undefined)}: "
        "update COMPILE_ONLY (or the block: a new undefined name may be a stale one)"
    )
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    imports: list[ast.stmt] = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    exec(compile(ast.Module(imports, type_ignores=[]), block.filename, "exec"), namespace)
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Attribute):
            resolve(node, namespace, problems)
        elif isinstance(node, ast.Call):
            check_call(node, namespace, problems)
    assert not problems, f"{block.id} is stale:\n" + "\n".join(problems)


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_snippet(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = COMPILE_ONLY.get(block.id)
    if spec is not None:
        check_compiles(block, spec)
        return
    tree = parse(block)
    if is_test_module(tree):
        run_pytest(block, tmp_path)
        return
    unknown = inputs_of(tree) - SERVED
    assert not unknown, (
        f"{block.id} uses {sorted(unknown)} without defining them; "
        f"it can be given {sorted(SERVED)}, or be listed in COMPILE_ONLY with the reason"
    )
    code = compile(tree, block.filename, "exec", flags=TOP_LEVEL_AWAIT)
    if inputs_of(tree) or entry_point(tree) is not None or code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(run_async(block, tree, code, track_endpoints(monkeypatch)))
    else:
        run_sync(code)


def test_every_markdown_file_and_both_python_fence_names_are_covered() -> None:
    """docs/ops/README.md and the like are read, and a ```py fence is run like a ```python one."""
    assert {p.relative_to(ROOT).as_posix() for p in DOCS} >= {"README.md", "docs/cli.md", "docs/ops/README.md"}
    text = "```py\nx = 1\n```\n\n```python\ny = 2\n```\n\n```pycon\n>>> z\n```\n\n```sh\nls\n```\n"
    assert [m.group(2) for m in FENCE.finditer(text)] == ["x = 1\n", "y = 2\n"]


def test_compile_only_blocks_exist() -> None:
    ids = {b.id for b in BLOCKS}
    stale = sorted(set(COMPILE_ONLY) - ids)
    assert not stale, f"COMPILE_ONLY names blocks that no longer exist: {stale}; the blocks are {sorted(ids)}"
