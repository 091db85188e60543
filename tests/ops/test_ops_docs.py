"""docs/ops: the alert rules pass promtool (syntax and their unit tests), and every metric the
rules, the Grafana dashboard and docs/ops/README.md name is one a node, its HTTP server and a
relay really export after real traffic (and README lists every one they export)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_p2p import Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.ops import start_metrics_server
from asgi_p2p.ops.server import MetricsServer
from asgi_p2p.relay.server import RelayServer

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
#: names Prometheus itself makes (not exported by asgi-p2p) that the rules may use
PROMETHEUS_OWN = {"up"}
METRIC = re.compile(r"\b((?:asgi_p2p|process)_[a-z0-9_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool not found: install Debian's prometheus package (make sysdeps)"
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=OPS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    test = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=OPS, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def exported() -> tuple[set[str], set[str]]:
    """(sample names, documented names: counters with _total) after traffic through a relay."""
    relay = await RelayServer.bind(SecretKey.generate(), host="127.0.0.1")
    url = str(relay.url)
    a = await Node.bind(host="127.0.0.1", relay_url=url)
    b = await Node.bind(host="127.0.0.1", relay_urls=[url])  # a relay list: the fleet's metrics too
    server = H3Server(app, a, lifespan="off")
    listeners: list[MetricsServer] = []
    try:
        listeners.append(await start_metrics_server("127.0.0.1:0", endpoint=a, http=server))
        listeners.append(await start_metrics_server("127.0.0.1:0", endpoint=b))
        listeners.append(await start_metrics_server("127.0.0.1:0", relay=relay))
        await server.startup()
        assert a.relay is not None and b.relay is not None
        await a.relay.wait_connected(20)
        await b.relay.wait_connected(20)
        transport = P2PTransport(b)
        transport.add_addr(a.node_addr())
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"https://{a.node_id}/")).status_code == 200
        samples: set[str] = set()
        documented: set[str] = set()
        async with httpx.AsyncClient() as http:
            for listener in listeners:
                text = (await http.get(f"{listener.url}/metrics")).text
                for family in text_string_to_metric_families(text):
                    samples.update(s.name for s in family.samples)
                    name = family.name
                    if name.endswith("_created"):  # creation times of counters and histograms
                        continue
                    # the text format spells a gauge histogram's count and sum as families of their own
                    name = re.sub(r"_(gcount|gsum)$", "", name)
                    documented.add(name + ("_total" if family.type == "counter" else ""))
        return samples, documented
    finally:
        await server.shutdown()
        await a.close()
        await b.close()
        for listener in listeners:
            await listener.close()
        await relay.close()


def dashboard_queries() -> list[str]:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


@pytest.fixture(scope="module")
def names() -> tuple[set[str], set[str]]:
    import asyncio

    return asyncio.run(exported())


def test_dashboard_and_rules_query_only_exported_metrics(names: tuple[set[str], set[str]]) -> None:
    samples, _ = names
    queries = dashboard_queries()
    assert len(queries) >= 25
    used = {m for q in queries for m in METRIC.findall(q)}
    rules = (OPS / "alerts.yml").read_text()
    exprs = re.findall(r"expr: (\|\n(?:\s{10}.*\n)+|.*)", rules)
    assert len(exprs) == 6
    used |= {m for e in exprs for m in METRIC.findall(e)}
    assert "up" in " ".join(exprs)  # the one name Prometheus makes itself
    assert used - samples == set(), "queried but not exported"
    assert len(used) >= 25


def test_readme_lists_every_exported_metric(names: tuple[set[str], set[str]]) -> None:
    _, documented = names
    readme = (OPS / "README.md").read_text()
    listed = set(re.findall(r"^\| `((?:asgi_p2p|process)_[a-z0-9_]+)`", readme, re.M))
    asgi = {n for n in documented if n.startswith("asgi_p2p_")}
    assert asgi - listed == set(), "exported but not in docs/ops/README.md"
    assert listed - documented == set(), "listed in docs/ops/README.md but not exported"
