"""Helpers shared by the ``serve``, ``get`` and ``relay`` commands (no HTTP imports here)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from ..errors import InvalidConfiguration, P2PError

if TYPE_CHECKING:
    from ..identity import NodeAddr, SecretKey
    from ..paths.prober import PathInfo

__all__ = [
    "LOG_LEVELS",
    "PENDING_WARNINGS",
    "RELAY_URL_ENV",
    "Command",
    "Subcommand",
    "add_config_arg",
    "add_discovery_args",
    "add_dns_args",
    "add_log_args",
    "add_node_args",
    "changed_settings",
    "configure_logging",
    "default_key_file",
    "describe_error",
    "directory_addr",
    "dns_update_option",
    "flag_name",
    "fmt_path",
    "load_env_file",
    "log_options",
    "on_sighup",
    "parse_env_file",
    "relay_kwargs",
    "relay_url_option",
    "relay_urls_option",
    "secret_key",
    "setting_source",
    "signal_handlers",
    "write_atomically",
]


def default_key_file() -> Path:
    """The stable key of this user (created 0600 on first use)."""
    return Path(platformdirs.user_config_dir("asgi-p2p")) / "node.key"


#: runs a parsed command line; returns the exit status
Command = Callable[[argparse.Namespace], int]
#: (help text, function adding the arguments, command) of one ``asgi-p2p`` subcommand
Subcommand = tuple[str, Callable[[argparse.ArgumentParser], None], Command]

#: the home relay when ``--relay`` is not given (``serve`` and ``get``)
RELAY_URL_ENV = "ASGI_P2P_RELAY_URL"

LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}

log = logging.getLogger("asgi_p2p.cli")

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


#: warnings found before logging was configured (unknown variables); logged by configure_logging
PENDING_WARNINGS: list[str] = []


def configure_logging(
    level_name: str, *, log_format: str = "text", log_config: Path | None = None, access_log: bool = True
) -> None:
    """Configure logging for a command (see :mod:`asgi_p2p.cli.logs`), then log :data:`PENDING_WARNINGS`."""
    from . import logs

    logs.setup(LOG_LEVELS[level_name], log_format=log_format, log_config=log_config, access_log=access_log)
    for warning in PENDING_WARNINGS:
        log.warning("%s", warning)
    PENDING_WARNINGS.clear()


#: The flags of :func:`add_log_args`, by dest: a SIGHUP that changes one reconfigures logging.
LOG_SETTINGS = ("log_level", "log_format", "log_config", "no_access_log")


def reconfigure_logging(old: argparse.Namespace, new: argparse.Namespace) -> bool:
    """SIGHUP: configure logging from ``new``'s flags; if that fails (a bad ``--log-config``),
    log the error, configure it from ``old``'s again and return False."""
    try:
        configure_logging(new.log_level, **log_options(new))
    except P2PError as exc:
        try:
            configure_logging(old.log_level, **log_options(old))
        except P2PError:  # the old --log-config file is gone or broken too: the defaults, at the old level
            configure_logging(old.log_level, **{**log_options(old), "log_config": None})
        log.error("SIGHUP: logging unchanged: %s", exc)
        return False
    return True


def log_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`configure_logging` from the flags of :func:`add_log_args`."""
    return {
        "log_format": getattr(args, "log_format", "text"),
        "log_config": getattr(args, "log_config", None),
        "access_log": not getattr(args, "no_access_log", False),
    }


def add_log_args(
    p: argparse.ArgumentParser, *, default_level: str = "info", config: bool = True, access: bool = False
) -> None:
    """``--log-level``, ``--log-format``, and (``config``) ``--log-config``, (``access``) ``--no-access-log``."""
    p.add_argument(
        "--log-level", choices=list(LOG_LEVELS), default=default_level, help=f"log level (default: {default_level})"
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text (timestamp, level, logger, message) or json (one object per line) (default: text)",
    )
    if config:
        p.add_argument(
            "--log-config",
            type=Path,
            metavar="FILE",
            help="logging configuration applied after the defaults, as uvicorn's: .json or .yaml/.yml "
            "(PyYAML needed) for logging.config.dictConfig, anything else for fileConfig (INI)",
        )
    if access:
        p.add_argument(
            "--no-access-log",
            action="store_true",
            help="no access log (one line per request on logger asgi_p2p.http.access)",
        )


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: a TOML file of settings (see :mod:`asgi_p2p.cli.settings`)."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings, named like the flags (limit_concurrency = 8); "
        "precedence: flag > ASGI_P2P_* variable > this file > default",
    )


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
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value:g}")
    return value


def seconds_or_off(text: str) -> float:
    """A number of seconds, or 0 for off (finite, not negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0: off), got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a positive finite number, got {value:g}")
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


# -- commands that run a node (serve and relay) -------------------------------------------


def add_node_args(p: argparse.ArgumentParser, *, key_file_note: str = "", ephemeral_help: str) -> None:
    """``--key-file`` or ``--ephemeral`` (the node's identity), ``--host`` and ``--port``."""
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help=f"secret key file, created 0600 if missing (default: {default_key_file()}){key_file_note}",
    )
    keys.add_argument("--ephemeral", action="store_true", help=ephemeral_help)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address of the UDP socket (default: 127.0.0.1; use 0.0.0.0 or :: to serve other machines)",
    )
    p.add_argument("--port", type=port_number, default=0, help="UDP port (default: 0 = any free port)")


def secret_key(args: argparse.Namespace) -> SecretKey:
    """The node's key from ``--ephemeral`` or ``--key-file`` (default file created if missing)."""
    from ..identity import SecretKey, load_or_create_key

    if args.ephemeral:
        return SecretKey.generate()
    path: Path = args.key_file or default_key_file()
    existed = path.exists()
    key = load_or_create_key(path)
    if not existed:
        log.info("created a new key file %s (mode 0600)", path)
    return key


def write_atomically(path: Path, line: str) -> None:
    """Write ``line`` (and a newline) to ``path``: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(line + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def signal_handlers(on_signal: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_signal(name)`` on SIGINT and SIGTERM in the running loop, while in the block.

    Where the loop cannot handle signals (not the main thread, Windows) nothing is installed.
    """
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def on_sighup(handler: Callable[[], None]) -> Iterator[None]:
    """Call ``handler`` on SIGHUP while in the block (nothing where signals cannot be handled)."""
    loop = asyncio.get_running_loop()
    sighup = getattr(signal, "SIGHUP", None)
    installed = False
    if sighup is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sighup, handler)
            installed = True
    try:
        yield
    finally:
        if installed and sighup is not None:
            loop.remove_signal_handler(sighup)


def flag_name(dest: str) -> str:
    """``limit_concurrency`` -> ``--limit-concurrency``."""
    return "--" + dest.replace("_", "-")


def changed_settings(old: argparse.Namespace, new: argparse.Namespace, ignore: set[str]) -> list[str]:
    """The dests of ``new`` whose value differs from ``old``'s (besides ``ignore``), sorted."""
    return sorted(d for d, v in vars(new).items() if d not in ignore and getattr(old, d, None) != v)


def require_http() -> None:
    """Import the HTTP layer now, turning a failure into a one-line error."""
    try:
        importlib.import_module("asgi_p2p.http")
    except ImportError as exc:
        raise P2PError(f"the HTTP layer (asgi_p2p.http) cannot be imported: {exc}") from None


# -- NAT traversal and discovery options (serve and get) --------------------------------


def add_relay_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str) -> None:
    """``--relay URL``: repeatable and comma-separated (a list setting)."""
    p.add_argument(
        "--relay",
        metavar="URL",
        action="append",
        help=f"{help_text}; repeat it (or separate URLs with commas) to give several relays: the node "
        "makes the one with the lowest round-trip time its home relay, moves home when it dies, and "
        f"reaches peers on the others (default: ${RELAY_URL_ENV} if set)",
    )


def relay_urls_option(values: Sequence[str] | None, source: str = "--relay") -> list[str]:
    """The relay URLs of a repeatable, comma-separated ``--relay`` (normalized, in order).

    Each value may hold several URLs separated by commas.  None (the option not given)
    falls back to ``$ASGI_P2P_RELAY_URL``.  Raises :class:`InvalidConfiguration` naming
    ``source`` for a URL that does not parse, and for more than :data:`MAX_RELAYS` relays.
    """
    from ..relay.fleet import MAX_RELAYS

    if values is None:
        env = os.environ.get(RELAY_URL_ENV, "").strip()
        values, source = ([env] if env else []), f"${RELAY_URL_ENV}"
    urls: list[str] = []
    for value in values:
        for part in value.split(","):
            url = relay_url_option(part.strip(), source) if part.strip() else None
            if url is not None and url not in urls:
                urls.append(url)
    if len(urls) > MAX_RELAYS:
        raise InvalidConfiguration(f"{source}: {len(urls)} relay URLs; at most {MAX_RELAYS} are allowed")
    return urls


def relay_kwargs(urls: Sequence[str]) -> dict[str, Any]:
    """``Node.bind`` arguments for the relays of :func:`relay_urls_option`: none, one, or several."""
    if not urls:
        return {}
    if len(urls) == 1:
        return {"relay_url": urls[0]}
    return {"relay_urls": list(urls)}


def add_discovery_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, serving: bool) -> None:
    """``--mdns``, ``--mdns-interface`` and ``--directory`` (shared by ``serve`` and ``get``)."""
    if serving:
        mdns_help = "announce this node on the LAN with mDNS (off by default: everyone on the LAN sees it)"
        directory_help = (
            "the directory that --publish publishes our signed record to: its ticket, or a relay URL "
            "(relays serve one; default: the --relay)"
        )
    else:
        mdns_help = "also look the node (or name) up on the LAN with mDNS"
        directory_help = "look a node id or name up in this directory: its ticket, or a relay URL (relays serve one)"
    p.add_argument("--mdns", action="store_true", help=mdns_help)
    p.add_argument(
        "--mdns-interface",
        action="append",
        default=[],
        metavar="IP",
        help="use mDNS only on the interface with this address (repeatable; default: all)",
    )
    p.add_argument("--directory", metavar="TICKET_OR_RELAY_URL", help=directory_help)


def setting_source(args: argparse.Namespace, name: str, flag: str) -> str:
    """How errors name where a setting came from: ``flag``, ``$ASGI_P2P_X`` or ``FILE: key``."""
    resolved = getattr(args, "settings", None)
    source = resolved.sources.get(name) if resolved is not None else None
    if source is None or source == "command line":
        return flag
    return f"${source}" if source.startswith("ASGI_P2P_") else source


def add_dns_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, serving: bool) -> None:
    """``--dns-zone``; for ``get`` ``--dns-server``, for ``serve`` ``--dns-update`` and ``--dns-tsig-key-file``."""
    if serving:
        p.add_argument(
            "--dns-zone",
            metavar="ZONE",
            help="publish our signed record as TXT at NODE_ID.ZONE (needs --dns-update and --dns-tsig-key-file)",
        )
        p.add_argument("--dns-update", metavar="HOST[:PORT]", help="the zone's primary DNS server, for the update")
        p.add_argument(
            "--dns-tsig-key-file",
            type=Path,
            metavar="PATH",
            help="file holding the TSIG key allowed to update the zone: [ALGORITHM:]NAME:SECRET (base64)",
        )
    else:
        p.add_argument("--dns-zone", metavar="ZONE", help="look the node (or name) up in DNS: TXT at NODE_ID.ZONE")
        p.add_argument(
            "--dns-server",
            action="append",
            default=[],
            metavar="HOST[:PORT]",
            help="DNS server to ask (repeatable; default: the system's resolvers)",
        )


def dns_update_option(args: argparse.Namespace) -> Any:
    """The :class:`~asgi_p2p.discovery.dns.DnsUpdate` of ``serve``'s DNS flags, or None (nothing published)."""
    zone = setting_source(args, "dns_zone", "--dns-zone")
    update = setting_source(args, "dns_update", "--dns-update")
    key_file = setting_source(args, "dns_tsig_key_file", "--dns-tsig-key-file")
    given = [f for f, v in ((update, args.dns_update), (key_file, args.dns_tsig_key_file)) if v]
    if args.dns_zone is None:
        if given:
            raise InvalidConfiguration(f"{given[0]} needs --dns-zone")
        return None
    if len(given) != 2:
        raise InvalidConfiguration(f"{zone} needs --dns-update HOST[:PORT] and --dns-tsig-key-file PATH")
    from ..discovery.dns import DnsUpdate

    try:
        text = args.dns_tsig_key_file.read_text().strip()
    except OSError as exc:
        raise InvalidConfiguration(f"{key_file}: cannot read {args.dns_tsig_key_file}: {exc}") from None
    try:
        return DnsUpdate.parse_key(args.dns_update, text)
    except InvalidConfiguration as exc:
        raise InvalidConfiguration(f"{key_file} / {update}: {exc}") from None


def relay_url_option(value: str | None, source: str = "--relay") -> str | None:
    """The relay URL from ``--relay`` or ``$ASGI_P2P_RELAY_URL`` (normalized), or None.

    ``source`` names where ``value`` came from in errors.  Raises
    :class:`InvalidConfiguration` with a one-line message if it does not parse.
    """
    text = value
    if text is None:
        text = os.environ.get(RELAY_URL_ENV, "").strip() or None
        source = f"${RELAY_URL_ENV}"
    if text is None:
        return None
    from ..relay.url import RelayUrl

    try:
        return str(RelayUrl.parse(text.strip()))
    except InvalidConfiguration as exc:
        raise InvalidConfiguration(f"{source}: {exc}") from None


def directory_addr(text: str) -> NodeAddr:
    """The directory node from ``--directory``: a ticket, or a relay URL (relays serve a directory too)."""
    from ..errors import InvalidTicket
    from ..relay.url import RELAY_URL_SCHEME, RelayUrl
    from ..ticket import Ticket

    text = text.strip()
    if text.lower().startswith(f"{RELAY_URL_SCHEME}://"):
        try:
            return RelayUrl.parse(text).node_addr()
        except InvalidConfiguration as exc:
            raise InvalidConfiguration(f"--directory: {exc}") from None
    try:
        addr = Ticket.parse(text).to_node_addr()
    except InvalidTicket as exc:
        raise InvalidConfiguration(f"--directory: {exc} (expected a ticket or a relay URL)") from None
    if not addr.direct_addresses and addr.relay_url is None:
        raise InvalidConfiguration("--directory: the ticket has no address or relay to reach the directory at")
    return addr


def mdns_interfaces(items: list[str]) -> list[str] | None:
    """``--mdns-interface`` values checked as IP addresses (None: every interface)."""
    import ipaddress

    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise InvalidConfiguration(f"--mdns-interface: {item!r} is not an IP address") from None
    return list(items) or None


def fmt_addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def fmt_path(path: PathInfo, relay_url: str | None) -> str:
    """``direct 203.0.113.6:40000 rtt 21.3 ms`` or ``relay p2p-relay://...``."""
    if path.kind == "direct" and path.addr is not None:
        rtt = f" rtt {path.rtt * 1000:.1f} ms" if path.rtt is not None else ""
        return f"direct {fmt_addr(path.addr)}{rtt}"
    return f"relay {relay_url}" if relay_url else "relay"
