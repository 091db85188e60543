"""Logging for the commands: timestamps, ``--log-format json``, ``--log-config``, ``--no-access-log``.

Text lines (the default)::

    2026-12-06 16:42:11,123 INFO     asgi_p2p.http.access: <node id> - "GET /?q=1 HTTP/3" 200 OK

``--log-format json`` prints one JSON object per line: ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, the record's extra fields (the access log's
``client``, ``method``, ``path``, ``status``, ``outcome``, ``kind``) and ``exception``.

``--log-config FILE`` hands the file to :mod:`logging.config` after the defaults are set,
as uvicorn does: ``.json`` and ``.yaml``/``.yml`` (PyYAML needed) go to ``dictConfig``,
anything else to ``fileConfig`` (INI).  The formatters here can be named in it:
``asgi_p2p.cli.logs.JsonFormatter`` and ``asgi_p2p.cli.logs.TextFormatter``.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
from pathlib import Path
from typing import Any

from ..errors import InvalidConfiguration

__all__ = ["ACCESS_LOGGER", "LOG_FORMATS", "JsonFormatter", "TextFormatter", "apply_log_config", "setup"]

ACCESS_LOGGER = "asgi_p2p.http.access"
LOG_FORMATS = ("text", "json")
TRACE = 5

#: attributes every LogRecord has: the rest came from ``extra=``
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """``2026-12-06 16:42:11,123 INFO     logger: message``."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: Any = "%") -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)-8s %(name)s: %(message)s", datefmt, style)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def setup(level: int, *, log_format: str = "text", log_config: Path | None = None, access_log: bool = True) -> None:
    """Configure the root logger for a command (see the module docstring)."""
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("asgi_p2p").setLevel(level)
    # aioquic logs each connection (and each refused handshake) itself; our own errors say it better
    logging.getLogger("quic").setLevel(level if level <= logging.DEBUG else logging.ERROR)
    access = logging.getLogger(ACCESS_LOGGER)
    access.disabled = False
    if log_config is not None:
        apply_log_config(log_config)
    if not access_log:
        access.disabled = True  # the server checks isEnabledFor(): no line is even built


def apply_log_config(path: Path) -> None:
    """``logging.config`` from a JSON, YAML or INI file; :class:`InvalidConfiguration` if it cannot be used."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".json", ".yaml", ".yml"):
            text = path.read_text(encoding="utf-8")
            config: Any
            if suffix == ".json":
                try:
                    config = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InvalidConfiguration(f"--log-config {path}: not valid JSON: {exc}") from None
            else:
                try:
                    import yaml  # type: ignore[import-untyped]
                except ImportError:
                    raise InvalidConfiguration(
                        f"--log-config {path}: a YAML file needs PyYAML (pip install pyyaml); "
                        "or write the same configuration as JSON"
                    ) from None
                try:
                    config = yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    raise InvalidConfiguration(f"--log-config {path}: not valid YAML: {exc}") from None
            if not isinstance(config, dict):
                raise InvalidConfiguration(f"--log-config {path}: expected a dictConfig mapping at the top")
            config.setdefault("version", 1)
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            if not path.is_file():
                raise InvalidConfiguration(f"--log-config {path}: no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except OSError as exc:
        raise InvalidConfiguration(f"--log-config {path}: {exc.strerror or exc}") from None
    except InvalidConfiguration:
        raise
    except Exception as exc:  # dictConfig/fileConfig raise ValueError, KeyError, configparser errors...
        raise InvalidConfiguration(f"--log-config {path}: {type(exc).__name__}: {exc}") from None
