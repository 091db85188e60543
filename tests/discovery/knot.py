"""Knot DNS (Debian's knotd) in a network namespace of its own, for the DNS tests and benchmark.

:func:`knot_in_netns` creates a namespace with only loopback (so the DNS server
never listens on the host), writes a zone, a configuration and a random TSIG
key under ``workdir``, starts knotd in it, waits until the zone answers, and on
exit (also on failure) stops that knotd by its own handle and deletes the
namespace.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KNOTD = "/usr/sbin/knotd"
#: The TSIG key name the configuration allows to update the zone.
KEY_NAME = "update-key"


class KnotUnavailable(RuntimeError):
    """Not root, knotd/kdig missing, or knotd did not come up (the message says which)."""


@dataclass(frozen=True)
class KnotServer:
    netns: str
    #: ``HOST:PORT`` of the server inside the namespace
    address: str
    #: the base64 TSIG secret of :data:`KEY_NAME` (hmac-sha256)
    secret: str
    log: Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def knot_in_netns(workdir: Path, zone: str, *, name: str | None = None) -> Iterator[KnotServer]:
    if os.geteuid() != 0:
        raise KnotUnavailable("the DNS tests create a network namespace and need root (run the suite as root)")
    if not os.path.exists(KNOTD) or shutil.which("kdig") is None:
        raise KnotUnavailable("knotd / kdig missing: install knot and knot-dnsutils (make sysdeps)")
    secret = base64.b64encode(os.urandom(32)).decode()
    (workdir / f"{zone}.zone").write_text(
        f"$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. admin.{zone}. 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n"
    )
    (workdir / "db").mkdir(exist_ok=True)  # journal and timers (knotd does not create it)
    conf = workdir / "knot.conf"
    conf.write_text(
        f"""server:
    rundir: "{workdir}"
    listen: 127.0.0.1@53
database:
    storage: "{workdir}/db"
control:
    listen: "{workdir}/knot.sock"
log:
  - target: stderr
    any: info
key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: update
    key: {KEY_NAME}
    action: update
zone:
  - domain: {zone}
    storage: "{workdir}"
    file: "{zone}.zone"
    acl: update
"""
    )
    ns = name or f"asgip2p-dns-{os.getpid()}"
    log_path = workdir / "knotd.log"
    _ip("netns", "add", ns)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, KNOTD, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while True:  # until the zone answers (SOA over ordinary DNS)
            probe = subprocess.run(
                ["ip", "netns", "exec", ns, "kdig", "+short", "+time=1", "+retry=0", "@127.0.0.1", zone, "SOA"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if probe.returncode == 0 and f"ns.{zone}." in probe.stdout:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise KnotUnavailable(f"knotd did not serve {zone}: {log_path.read_text()}")
            time.sleep(0.1)
        yield KnotServer(ns, "127.0.0.1:53", secret, log_path)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the knotd started here, by its own handle
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)
