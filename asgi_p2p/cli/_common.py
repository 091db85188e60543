"""Helpers shared by the ``serve`` and ``get`` commands (no HTTP imports here)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
from pathlib import Path

from ..errors import InvalidConfiguration, P2PError

__all__ = [
    "LOG_LEVELS",
    "configure_logging",
    "describe_error",
    "load_env_file",
    "parse_env_file",
]

LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def configure_logging(level_name: str) -> None:
    level = LOG_LEVELS[level_name]
    logging.addLevelName(5, "TRACE")
    logging.basicConfig(level=level, format="%(levelname)-8s %(name)s: %(message)s", force=True)
    logging.getLogger("asgi_p2p").setLevel(level)
    # aioquic logs every connection at INFO; keep it quiet unless debugging
    # aioquic logs each connection (and each refused handshake) itself; our own errors say it better
    logging.getLogger("quic").setLevel(level if level <= logging.DEBUG else logging.ERROR)


def parse_env_file(text: str, path: str = "<env>") -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (``export``, quotes and ``#`` comments allowed)."""
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m is None:
            raise InvalidConfiguration(f"{path}:{lineno}: expected KEY=VALUE, got {stripped!r}")
        key, raw = m.group(1), m.group(2)
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]
            if raw[0] == '"':
                value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
        else:
            value = re.sub(r"\s+#.*$", "", raw)  # unquoted: strip a trailing comment
        values[key] = value
    return values


def load_env_file(path: Path) -> dict[str, str]:
    """Read an env file into ``os.environ`` (variables already set win, as with uvicorn)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read --env-file {path}: {exc.strerror or exc}") from None
    values = parse_env_file(text, str(path))
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return values


def describe_error(exc: BaseException) -> str:
    """One line for an error: the most specific asgi-p2p message in its chain, else the error itself."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, P2PError):
            return _one_line(str(cur) or type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    text = str(exc) or type(exc).__name__
    return _one_line(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, port_number(rest)


def require_http() -> None:
    """Import the HTTP layer now, turning a failure into a one-line error."""
    try:
        importlib.import_module("asgi_p2p.http")
    except ImportError as exc:
        raise P2PError(f"the HTTP layer (asgi_p2p.http) cannot be imported: {exc}") from None
