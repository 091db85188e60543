"""Every flag is also an ``ASGI_P2P_*`` variable and a ``--config`` TOML key (in process: nothing is bound).

Precedence flag > environment > file > default, errors that name the setting and the
problem, unknown variables reported with a close match, and docs/configuration.md's
table of settings agreeing with the parsers.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from asgi_p2p.cli import _common, all_parsers, main, settings
from asgi_p2p.cli import proxy as proxy_cli
from asgi_p2p.cli import relay as relay_cli
from asgi_p2p.cli import serve as serve_cli
from asgi_p2p.config import NetworkConfig
from asgi_p2p.identity import SecretKey

from .conftest import Cli, free_udp_port, one_line_error

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
NODE_A = "ybndrfg8ejkmcpqxot1uwisza345h769ybndrfg8ejkmcpqxot1u"
NODE_B = "o" * 52


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``main()`` with serve and relay replaced by functions that keep their arguments."""
    seen: dict[str, Any] = {}

    def keep(args: argparse.Namespace) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setattr(serve_cli, "run_serve", keep)
    monkeypatch.setattr(relay_cli, "run_relay", keep)
    for var in [v for v in __import__("os").environ if v.startswith("ASGI_P2P_")]:
        monkeypatch.delenv(var)
    _common.PENDING_WARNINGS.clear()
    return seen


def run(captured: dict[str, Any], *argv: str) -> argparse.Namespace:
    assert main(list(argv)) == 0
    args: argparse.Namespace = captured["args"]
    return args


def test_every_flag_of_serve_relay_and_get_has_a_variable() -> None:
    subs = all_parsers()
    for command in ("serve", "relay", "get"):
        parser = subs[command]
        found = settings.settings_of(parser)
        options = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o not in ("--help",)}
        assert options == {s.option for s in found.values()}, command
    names = settings.known_variables(subs.values())
    for var in ("PORT", "HOST", "KEY_FILE", "LOG_LEVEL", "RELAY_URL", "ALLOW_FILE", "CONFIG", "TIMEOUT", "PUBLIC_HOST"):
        assert f"ASGI_P2P_{var}" in names
    assert "ASGI_P2P_IDLE_TIMEOUT" in names  # NetworkConfig fields too


def test_precedence_flag_over_env_over_file_over_default(
    captured: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(captured, "serve", "m:app").port == 0
    config = tmp_path / "serve.toml"
    config.write_text("port = 1001\nlimit_concurrency = 8\nlog_level = 'debug'\n")
    args = run(captured, "serve", "--config", str(config), "m:app")
    assert (args.port, args.limit_concurrency, args.log_level) == (1001, 8, "debug")
    assert args.settings.sources["port"] == f"{config}: port"
    monkeypatch.setenv("ASGI_P2P_PORT", "1002")
    args = run(captured, "serve", "--config", str(config), "m:app")
    assert (args.port, args.limit_concurrency) == (1002, 8)
    assert args.settings.sources["port"] == "ASGI_P2P_PORT"
    args = run(captured, "serve", "--config", str(config), "--port", "1003", "m:app")
    assert (args.port, args.limit_concurrency) == (1003, 8)
    # the config file can come from the environment too
    monkeypatch.setenv("ASGI_P2P_CONFIG", str(config))
    assert run(captured, "serve", "m:app").limit_concurrency == 8


def test_flags_lists_and_network_fields(
    captured: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASGI_P2P_ALLOW", f"{NODE_A} {NODE_B}")
    monkeypatch.setenv("ASGI_P2P_PUBLISH", "yes")
    args = run(captured, "serve", "--allow", NODE_A, "m:app")
    assert args.allow == [NODE_A]  # the command line replaces the variable's list
    monkeypatch.delenv("ASGI_P2P_ALLOW")
    args = run(captured, "serve", "m:app")
    assert args.publish is True and args.allow == []
    monkeypatch.setenv("ASGI_P2P_HEADER", '["Accept: text/plain", "X-A: b c"]')
    subs = all_parsers()
    resolved = settings.resolve(subs["get"], ["TARGET"])
    assert resolved.defaults["headers"] == ["Accept: text/plain", "X-A: b c"]
    # a flag's "off" in the environment beats the file's "on"
    config = tmp_path / "c.toml"
    config.write_text(f"publish = true\nallow = ['{NODE_A}']\nidle_timeout = 60\nmax_streams = 7\n")
    monkeypatch.setenv("ASGI_P2P_PUBLISH", "off")
    monkeypatch.setenv("ASGI_P2P_MAX_STREAMS", "9")
    args = run(captured, "serve", "--config", str(config), "m:app")
    assert args.publish is False and args.allow == [NODE_A]
    assert args.settings.network == {"idle_timeout": 60}  # max_streams: the variable wins (read by NetworkConfig)


def test_a_command_line_choice_in_a_group_beats_the_variable(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ASGI_P2P_KEY_FILE", str(tmp_path / "k"))
    args = run(captured, "serve", "--ephemeral", "m:app")
    assert args.ephemeral is True and args.key_file is None
    args = run(captured, "serve", "m:app")
    assert args.key_file == tmp_path / "k"
    monkeypatch.setenv("ASGI_P2P_EPHEMERAL", "1")
    assert main(["serve", "m:app"]) == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASGI_P2P_PORT": "http"}, "ASGI_P2P_PORT='http': expected a port number, got 'http'"),
        ({"ASGI_P2P_PORT": "70000"}, "ASGI_P2P_PORT='70000': port must be 0-65535, got 70000"),
        ({"ASGI_P2P_LOG_LEVEL": "loud"}, "ASGI_P2P_LOG_LEVEL='loud': must be one of critical, error, warning"),
        ({"ASGI_P2P_LIMIT_CONCURRENCY": "0"}, "ASGI_P2P_LIMIT_CONCURRENCY='0': must be positive, got 0"),
        ({"ASGI_P2P_MDNS": "maybe"}, "ASGI_P2P_MDNS='maybe': expected a boolean"),
        ({"ASGI_P2P_ALLOW": "[1, 2]"}, "ASGI_P2P_ALLOW='[1, 2]': expected a JSON array of strings"),
        (
            {"ASGI_P2P_KEY_FILE": "/k", "ASGI_P2P_EPHEMERAL": "true"},
            "ASGI_P2P_KEY_FILE and ASGI_P2P_EPHEMERAL cannot both be set",
        ),
    ],
)
def test_bad_variables_name_the_setting_and_the_problem(
    captured: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", "m:app"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asgi-p2p: error: ") and message in err, err
    assert "args" not in captured


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 'x'\n", "port: expected a port number, got 'x'"),
        ("mdns = 1\n", "mdns: expected true or false, got int 1"),
        (
            "limit_concurency = 3\n",
            "unknown key 'limit_concurency': not a setting of this command (did you mean 'limit_concurrency'?)",
        ),
        ("idle_timeout = -1\n", "idle_timeout must be a finite number of seconds in (0, 86400], got -1"),
        ("host = [\n", "not valid TOML"),
        ("config = 'other.toml'\n", "unknown key 'config'"),
        ("lifespan = 'sometimes'\n", "lifespan: must be one of auto, on, off, got 'sometimes'"),
    ],
)
def test_bad_config_files_name_the_file_the_key_and_the_problem(
    captured: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["serve", "--config", str(config), "m:app"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asgi-p2p: error: {config}: ") and message in err, err


def test_relay_reads_its_config_file(captured: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("limit_clients = 50\nno_directory = true\npublic_host = 'relay.example.org'\n")
    args = run(captured, "relay", "--config", str(config))
    assert (args.limit_clients, args.no_directory, args.public_host) == (50, True, "relay.example.org")


def test_unknown_variables_are_reported_with_a_close_match(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASGI_P2P_LIMIT_CONCURENCY", "3")
    monkeypatch.setenv("ASGI_P2P_NOTHING_LIKE_IT", "1")
    monkeypatch.setenv("ASGI_P2P_IDLE_TIMEOUT", "20")  # a NetworkConfig field: known
    run(captured, "serve", "m:app")
    assert _common.PENDING_WARNINGS == [
        "unknown variable ASGI_P2P_LIMIT_CONCURENCY is ignored (did you mean ASGI_P2P_LIMIT_CONCURRENCY?)",
        "unknown variable ASGI_P2P_NOTHING_LIKE_IT is ignored",
    ]
    _common.PENDING_WARNINGS.clear()
    # a command without logging prints them at once
    monkeypatch.setenv("ASGI_P2P_PROT", "1")
    main(["id", "--key-file", str(Path(__file__).parent / "no-such-key")])
    err = capsys.readouterr().err
    assert "asgi-p2p: warning: unknown variable ASGI_P2P_PROT is ignored (did you mean ASGI_P2P_PORT?)" in err


#: Flags whose setting is the NetworkConfig field of the same name (the flag sets that field).
SETS_THE_NETWORK_FIELD = {"max_datagram_size", "max_connections_per_node", "handshake_rate_per_address"}


def test_no_variable_sets_a_flag_and_a_different_network_setting() -> None:
    """A setting named like a NetworkConfig field shares its variable (and file key) with it:
    allowed only where the flag sets that very field."""
    network = {f.name for f in fields(NetworkConfig)}
    for command, parser in all_parsers().items():
        for name in settings.settings_of(parser):
            assert name not in network or name in SETS_THE_NETWORK_FIELD, (command, name)


def test_proxy_backend_connections_and_the_nodes_quic_connections_are_separate_settings(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``proxy --max-connections`` is ``ASGI_P2P_BACKEND_MAX_CONNECTIONS`` / ``backend_max_connections``;
    ``ASGI_P2P_MAX_CONNECTIONS`` / ``max_connections`` stay the node's QUIC limit."""
    served: dict[str, Any] = {}

    def keep(load: Any, args: argparse.Namespace, label: str) -> int:
        served["app"], served["args"] = load(), args
        return 0

    monkeypatch.setattr(serve_cli, "serve_app", keep)
    monkeypatch.setattr(proxy_cli, "configure_logging", lambda *a, **k: None)

    def proxy(*argv: str) -> tuple[int, int]:
        """(the ProxyApp's backend connection limit, the node's NetworkConfig.max_connections)"""
        assert main(["proxy", *argv, "http://127.0.0.1:9"]) == 0
        args = served["args"]
        return served["app"].max_connections, NetworkConfig.from_env(**args.settings.network).max_connections

    assert proxy() == (100, 1024)
    monkeypatch.setenv("ASGI_P2P_MAX_CONNECTIONS", "5")
    assert proxy() == (100, 5)  # the network variable leaves the backend limit alone
    monkeypatch.delenv("ASGI_P2P_MAX_CONNECTIONS")
    monkeypatch.setenv("ASGI_P2P_BACKEND_MAX_CONNECTIONS", "7")
    assert proxy() == (7, 1024)  # and the flag's variable leaves the node's limit alone
    assert proxy("--max-connections", "8") == (8, 1024)
    monkeypatch.delenv("ASGI_P2P_BACKEND_MAX_CONNECTIONS")
    config = tmp_path / "proxy.toml"
    config.write_text("max_connections = 6\n")
    assert proxy("--config", str(config)) == (100, 6)  # a network setting by field name, as documented
    config.write_text("backend_max_connections = 9\n")
    assert proxy("--config", str(config)) == (9, 1024)


def test_gateway_connect_timeout_and_the_quic_connect_timeout_are_separate_settings(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gateway --connect-timeout`` (the 502 deadline) is ``ASGI_P2P_GATEWAY_CONNECT_TIMEOUT``;
    ``ASGI_P2P_CONNECT_TIMEOUT`` stays the QUIC handshake timeout of the gateway's node."""
    import asgi_p2p.gateway.gateway as gateway_module

    class Built(Exception):
        pass

    seen: dict[str, float] = {}

    def gateway(node: Any, routing: Any, **kwargs: Any) -> None:
        seen["deadline"], seen["handshake"] = kwargs["connect_timeout"], node.config.connect_timeout
        raise Built

    monkeypatch.setattr(gateway_module, "Gateway", gateway)

    def run_gateway(*argv: str) -> tuple[float, float]:
        """(the gateway's 502 deadline, its node's QUIC connect_timeout)"""
        with pytest.raises(Built):
            main(["gateway", "--ephemeral", "--bind", "127.0.0.1", "--listen", "127.0.0.1:0", *argv])
        return seen["deadline"], seen["handshake"]

    assert run_gateway() == (10.0, 10.0)
    monkeypatch.setenv("ASGI_P2P_CONNECT_TIMEOUT", "3")
    assert run_gateway() == (10.0, 3.0)  # the network variable leaves the 502 deadline alone
    monkeypatch.delenv("ASGI_P2P_CONNECT_TIMEOUT")
    monkeypatch.setenv("ASGI_P2P_GATEWAY_CONNECT_TIMEOUT", "4")
    assert run_gateway() == (4.0, 10.0)  # and the flag's variable leaves the handshake timeout alone
    assert run_gateway("--connect-timeout", "5") == (5.0, 10.0)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"asgi-p2p \d+\.\d+\.\S+ \(aioquic 1\.7\.2, \w+ 3\.\d+\.\d+\S* on \w+\)\n", out), out


def test_reload_rereads_the_config_file(captured: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("limit_concurrency = 4\n")
    args = run(captured, "serve", "--config", str(config), "--port", "7", "m:app")
    config.write_text("limit_concurrency = 5\nport = 9\n")
    again, _ = args.reload_settings()
    assert (again.limit_concurrency, again.port) == (5, 7)


def test_docs_table_lists_every_setting_as_the_parsers_define_it() -> None:
    """docs/configuration.md's table is `python -m tests.cli.test_settings` (rerun it when adding a flag)."""
    subs = all_parsers()
    text = DOC.read_text()
    start, end = text.index("<!-- settings-table:start -->"), text.index("<!-- settings-table:end -->")
    documented = [line for line in text[start:end].splitlines() if line.startswith("| `--")]
    assert documented == settings.table_rows(subs)


def test_a_shared_flags_meaning_is_each_commands_and_states_no_default_that_differs() -> None:
    """docs/configuration.md's row of a flag several commands have: per-command meanings where they
    differ, and no default in the meaning where the default column gives each command's."""
    rows = {}
    for row in settings.table_rows(all_parsers()):
        cells = row[2:-2].split(" | ")  # | flag | variable | file | commands | default | range | meaning |
        rows[cells[0].strip("`")] = cells
    for option, cells in rows.items():
        default, meaning = cells[4], cells[6]
        if "; " in default and ": `" in default:  # per-command defaults: the meaning must not name one
            assert "default" not in meaning, option
    timeout = rows["--timeout"][6]
    assert "*proxy*: backend connect" in timeout and "*get*: give up after this long without progress" in timeout
    key_file = rows["--key-file"][6]
    assert "*get, receive*: identify with this key (default: ephemeral)" in key_file
    assert rows["--log-level"][6] == "log level"
    output = rows["--output"][6]
    assert "*get*: write the body to FILE" in output and "*receive*: where to put it" in output


def test_docs_cli_md_names_every_flag_of_every_command() -> None:
    """docs/cli.md is "every command and flag" (README): each long option of each subcommand is in it."""
    text = (DOC.parent / "cli.md").read_text()
    missing = []
    for command, parser in all_parsers().items():
        parsers = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
        for p in parsers:
            for action in p._actions:
                for option in action.option_strings:
                    if option.startswith("--") and option != "--help":
                        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                            missing.append(f"{command} {option}")
    assert missing == []


if __name__ == "__main__":  # print the table's rows for docs/configuration.md (python -m tests.cli.test_settings)
    print("\n".join(settings.table_rows(all_parsers())))


def test_idle_connection_timeout_from_flag_and_variable(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(captured, "serve", "m:app").idle_connection_timeout is None  # the server's default (60 s)
    monkeypatch.setenv("ASGI_P2P_IDLE_CONNECTION_TIMEOUT", "0")
    assert run(captured, "serve", "m:app").idle_connection_timeout == 0  # off
    assert run(captured, "serve", "--idle-connection-timeout", "5", "m:app").idle_connection_timeout == 5
    monkeypatch.setenv("ASGI_P2P_IDLE_CONNECTION_TIMEOUT", "nan")
    assert main(["serve", "m:app"]) != 0
    err = capsys.readouterr().err
    assert "ASGI_P2P_IDLE_CONNECTION_TIMEOUT='nan': must be 0 (off) or a positive finite number" in err


@pytest.mark.parametrize(("value", "shown"), [("nan", "nan"), ("inf", "inf"), ("1e309", "inf")])
def test_a_non_finite_idle_timeout_stops_get_and_serve_before_they_start(
    cli: Cli, tmp_path: Path, value: str, shown: str
) -> None:
    """``ASGI_P2P_IDLE_TIMEOUT=nan|inf|1e309`` (a NetworkConfig field): one error line naming the
    variable and the range, exit status non-zero, no traceback; serve prints no ticket (before
    issue 12, ``get`` died with a traceback and ``serve`` printed a ticket, then failed every handshake)."""
    env = {"ASGI_P2P_IDLE_TIMEOUT": value}
    message = (
        f"ASGI_P2P_IDLE_TIMEOUT={value!r}: idle_timeout must be a finite number of seconds in (0, 86400], got {shown}"
    )
    node = SecretKey.from_seed("idle-timeout-target").node_id
    r = cli.run("get", f"{node}/x", "--addr", f"127.0.0.1:{free_udp_port()}", env=env, timeout=60)
    assert r.returncode != 0
    assert message in one_line_error(r.stderr)
    assert r.stdout == b""
    ticket_file = tmp_path / "ticket.txt"
    r = cli.run(
        "serve", "apps.music:app", "--ephemeral", "--no-admin-socket", "--ticket-file", ticket_file, env=env, timeout=60
    )
    assert r.returncode != 0
    assert message in one_line_error(r.stderr)
    assert b"p2p1" not in r.stdout + r.stderr and not ticket_file.exists()
