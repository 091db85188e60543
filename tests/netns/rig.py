"""A real Linux NAT rig out of network namespaces: a public net with a relay host and homes behind routers.

See README.md in this folder for the topology diagram and the fixture API. Needs root, ``ip`` (iproute2)
and ``nft`` (nftables); nothing here touches the root namespace's interfaces: every veth is created
directly inside the rig's namespaces, and the namespaces have no link to the outside, so no packet
can leave them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
UDPTOOL = HERE / "udptool.py"
DELAYLINE = HERE / "delayline.py"
DELAYLINE_ENV = "AP2P_RIG_DELAYLINE"  # "c" or "python": which delay line (default: C, Python without gcc)

#: Every namespace of this rig is named ``ap2p<creator pid>-<4 hex>-<role>``.
PREFIX = "ap2p"
NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")

_buffers: dict[int, bytearray] = {}
_logs: dict[int, Path] = {}
LOG: Any = object()  # spawn(stderr=LOG): stderr to a file in the rig's logdir

NAT_MODES: tuple[str, ...] = ("none", "eim", "eim-nofilter", "eim-fullcone", "symmetric")


class RigError(RuntimeError):
    pass


def missing_requirements() -> str | None:
    """Why the rig cannot run here, or None."""
    if os.geteuid() != 0:
        return "tests/netns need root (network namespaces, veth, nftables); run `make test` as root"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install the Debian package {pkg} (`make sysdeps` does, as root)"
    return None


def tcp_congestion_controls() -> list[str]:
    """The kernel's available TCP congestion controls (net.ipv4.tcp_available_congestion_control)."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        return []


_ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


def allow_tcp_congestion_control(name: str) -> tuple[str, str] | None:
    """Let network namespaces pick ``name`` as their default TCP congestion control.

    A namespace other than the host's may only choose one of the host's
    ``net.ipv4.tcp_allowed_congestion_control`` (the kernel answers anything else with an error), and
    that list holds the host's default plus reno unless widened: on a host whose default is BBR, a
    namespace cannot choose CUBIC. This adds ``name`` to the host's list when it is missing (root; it
    only widens what unprivileged sockets may choose, the host's own default is left alone) and
    returns ``(before, after)`` for :func:`restore_tcp_allowed_congestion_control`; None when nothing
    changed.
    """
    before = _ALLOWED_CC.read_text().strip()
    allowed = before.split()
    if name in allowed:
        return None
    _ALLOWED_CC.write_text(" ".join([*allowed, name]) + "\n")
    return before, _ALLOWED_CC.read_text().strip()


def restore_tcp_allowed_congestion_control(change: tuple[str, str]) -> None:
    """Undo :func:`allow_tcp_congestion_control`, unless someone changed the list since."""
    before, after = change
    if _ALLOWED_CC.read_text().strip() == after:
        _ALLOWED_CC.write_text(before + "\n")


def sh(argv: Sequence[str], *, input: str | None = None) -> str:
    res = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}\n{input or ''}")
    return res.stdout


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(*, include_own: bool = False) -> list[str]:
    """Delete namespaces of this rig whose creating process is gone (a killed earlier run).

    Namespaces of live processes (a parallel run) are left alone; ``include_own`` also deletes those
    created by this process.
    """
    removed = []
    for name in list_namespaces():
        m = NAME_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if (pid == os.getpid() and include_own) or (pid != os.getpid() and not pid_alive(pid)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            removed.append(name)
    return removed


def own_namespaces() -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"{PREFIX}{os.getpid()}-")]


def delay_line_kind(proc: subprocess.Popen[Any]) -> str:
    """Which delay line a ``Rig.delay_lines`` process runs: "C" (delayline.c, exec'd) or "Python" (the fallback)."""
    return "C" if Path(f"/proc/{proc.pid}/exe").resolve().name.startswith("delayline-") else "Python"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Impair:
    """Impairment of one link, applied in both directions.

    delay_ms: one-way delay added by a userspace delay line (so a round trip over the link gains
    2 * delay_ms); jitter_ms: extra uniform 0..jitter_ms per frame (reorders); queue_frames: frames
    the delay line holds at most (both directions together), more are dropped. loss_pct: each packet
    is dropped with this probability (nftables ``numgen random mod 100 < N drop``) in each direction,
    where it arrives, so each draw is one wire frame (the link's ends send no GSO super-packets; see
    ``Rig.loss_counts``). rate_kbit: ``tc tbf`` rate limit on both ends' egress.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: int = 0
    rate_kbit: int = 0
    queue_frames: int = 20000

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.rate_kbit < 0:
            raise ValueError(f"negative impairment: {self}")
        if not 1 <= self.queue_frames <= 1_000_000:
            raise ValueError(f"queue_frames must be 1..1000000, got {self.queue_frames}")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct must be 0..100, got {self.loss_pct}")


@dataclass(frozen=True)
class Host:
    """A namespace with one address. ``public_ip`` is where the public net sees it (its router's WAN)."""

    name: str
    ns: str
    ip: str
    public_ip: str


@dataclass(frozen=True)
class Home:
    """A home: ``host`` behind ``router``. For nat="none" there is no router and host.ip is public."""

    name: str
    nat: str
    host: Host
    router: Host | None  # router.ip is its WAN address; lan_ip its LAN address
    lan_ip: str | None


@dataclass
class Rig:
    """One rig: built by the constructor (pub + relay), extended by home()/public_host(), torn down by close()."""

    relay_link: Impair | None = None
    public_subnet: str = "203.0.113.0/24"
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    delay_lines: list[subprocess.Popen[Any]] = field(default_factory=list)  # also in procs, in link order
    homes: dict[str, Home] = field(default_factory=dict)
    _lan_hosts: dict[str, int] = field(default_factory=dict)  # extra hosts per home LAN (lan_host)
    _lossy_ends: list[tuple[str, str]] = field(default_factory=list)  # (namespace, interface) with a loss rule
    logdir: Path | None = None  # where spawned processes' stderr goes; default: a temp dir removed by close()
    #: TCP congestion control set in every namespace the rig creates (None: each inherits the host's default)
    tcp_congestion_control: str | None = None

    def __post_init__(self) -> None:
        self.base = f"{PREFIX}{os.getpid()}-{self.tag}"
        self._own_logdir = self.logdir is None
        self.logdir = Path(tempfile.mkdtemp(prefix=f"{self.base}-")) if self.logdir is None else self.logdir
        net = ipaddress.ip_network(self.public_subnet)
        if net.version != 4 or net.prefixlen > 30:
            raise ValueError(f"public_subnet must be an IPv4 network of /30 or larger, got {self.public_subnet}")
        self._pub_links = net.subnets(new_prefix=30)  # one /30 per attachment to the core router
        self._links = self._spawned = 0
        self._allowed_cc_change: tuple[str, str] | None = None
        if self.tcp_congestion_control is not None:
            available = tcp_congestion_controls()
            if self.tcp_congestion_control not in available:
                raise RigError(
                    f"TCP congestion control {self.tcp_congestion_control!r} is not available in this kernel "
                    f"(net.ipv4.tcp_available_congestion_control: {' '.join(available) or 'none'}; "
                    f"try: modprobe tcp_{self.tcp_congestion_control})"
                )
            self._allowed_cc_change = allow_tcp_congestion_control(self.tcp_congestion_control)
        try:
            self.pub = self._add_ns("pub")
            self.sysctl(self.pub, "net/ipv4/ip_forward=1")
            self.relay = self.public_host("relay", link=self.relay_link)
        except BaseException:
            self.close()
            raise

    # -- building ------------------------------------------------------------------------------

    def _add_ns(self, role: str) -> str:
        name = f"{self.base}-{role}"
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self._ip(name, "link set lo up")
        # no IPv6: the rig is IPv4 only, and this keeps router solicitations and DAD off the links
        self.sysctl(name, "net/ipv6/conf/all/disable_ipv6=1", "net/ipv6/conf/default/disable_ipv6=1", missing_ok=True)
        if self.tcp_congestion_control is not None:  # before any process starts in the namespace
            self.sysctl(name, f"net/ipv4/tcp_congestion_control={self.tcp_congestion_control}")
        return name

    def sysctl(self, ns: str, *settings: str, missing_ok: bool = False) -> None:
        """Set ``path/under/proc/sys=value`` settings inside ``ns`` (no procps needed)."""
        script = []
        for setting in settings:
            key, _, value = setting.partition("=")
            path = "/proc/sys/" + key.replace(".", "/")
            write = f"echo {value} > {path}"
            script.append(f"if [ -e {path} ]; then {write}; fi" if missing_ok else write)
        sh(["ip", "netns", "exec", ns, "sh", "-ec", "; ".join(script)])

    def _ip(self, ns: str, *cmds: str) -> None:
        sh(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def nft(self, ns: str, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f`` syntax) into namespace ``ns``."""
        sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset)

    def _wire_frames(self, *ends: tuple[str, str]) -> None:
        """Make each (namespace, interface) send only MTU-sized frames: a GSO super-packet it forwards
        or builds is cut at transmit (gso_max_size, the kernel segments any packet that exceeds it)."""
        for ns, ifname in ends:
            self._ip(ns, f"link set dev {ifname} gso_max_size 1500")

    def loss_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Per lossy link end (namespace, interface): (packets that arrived, packets the loss rule dropped)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for ns, ifname in self._lossy_ends:
            listing = sh(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", f"impair_{ifname}"])
            seen, dropped = (int(n) for n in re.findall(r"counter packets (\d+) ", listing))
            out[(ns, ifname)] = (seen, dropped)
        return out

    def _link(self, ns_a: str, if_a: str, ns_b: str, if_b: str, impair: Impair | None) -> None:
        """A veth link ns_a/if_a <-> ns_b/if_b, optionally through a delay-line namespace."""
        self._links += 1
        lossy = impair is not None and impair.loss_pct > 0
        if impair is not None and impair.delay_ms + impair.jitter_ms > 0:
            dl = self._add_ns(f"d{self._links}")
            self._ip(ns_a, f"link add {if_a} type veth peer name dla netns {dl}")
            self._ip(ns_b, f"link add {if_b} type veth peer name dlb netns {dl}")
            self._ip(dl, "link set dev dla up", "link set dev dlb up")
            # TSO/GSO would hand the delay line frames larger than the MTU: each end cuts what it sends
            self._wire_frames((ns_a, if_a), (ns_b, if_b), (dl, "dla"), (dl, "dlb"))
            args = [str(DELAYLINE), "dla", "dlb", str(impair.delay_ms), str(impair.jitter_ms), str(self._links)]
            proc = self.spawn(dl, [sys.executable, *args, str(impair.queue_frames)])
            self.delay_lines.append(proc)
            expect_line(proc, "ready", timeout=30)  # the first line of a run may compile delayline.c
        else:
            self._ip(ns_a, f"link add {if_a} type veth peer name {if_b} netns {ns_b}")
            if lossy:
                self._wire_frames((ns_a, if_a), (ns_b, if_b))
        if impair is not None and lossy:
            # Each direction loses packets where it arrives (prerouting, priority -300: before conntrack):
            # there every packet is one wire frame. A sender's TCP hands its interface super-packets
            # (TSO/GSO, up to 64 KB) that a router forwards whole, so a rule on the sending side would
            # drop a burst of segments with one draw; the interface cuts them to frames only on transmit.
            for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
                self.nft(ns, loss_ruleset(ifname, impair.loss_pct))
                self._lossy_ends.append((ns, ifname))
        if impair is not None and impair.rate_kbit > 0:
            for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
                sh(["tc", "-n", ns, "qdisc", "add", "dev", ifname, "root", "tbf",
                    "rate", f"{impair.rate_kbit}kbit", "burst", "32kbit", "latency", "400ms"])  # fmt: skip

    def _attach_public(self, ns: str, ifname: str, link: Impair | None) -> str:
        """Connect ns/ifname to the core router in pub over its own /30; returns ns's public address.

        The default route points at the core router, which knows only the rig's /30s: a packet to any
        other address ends there (ICMP unreachable), and `connect()`-to-learn-my-address tricks work.
        """
        sub = next(self._pub_links, None)
        if sub is None:
            raise RigError(f"public subnet {self.public_subnet} is full")
        gw, ip = (str(a) for a in sub.hosts())
        port = f"p{self._links + 1}"
        self._link(ns, ifname, self.pub, port, link)
        self._ip(self.pub, f"addr add {gw}/30 dev {port}", f"link set {port} up")
        self._ip(ns, f"addr add {ip}/30 dev {ifname}", f"link set {ifname} up", f"route add default via {gw}")
        return ip

    def public_host(self, name: str, link: Impair | None = None) -> Host:
        """A host with a public address straight on the public net (the relay is one)."""
        ns = self._add_ns(name)
        ip = self._attach_public(ns, "eth0", link)
        return Host(name, ns, ip, ip)

    def home(
        self,
        name: str,
        nat: str = "eim",
        *,
        wan: Impair | None = None,
        lan: Impair | None = None,
        lan_subnet: str | None = None,
    ) -> Home:
        """A home called ``name``: a host behind a router doing ``nat`` (see README), or a public host if "none".

        ``wan`` impairs the router's link to the public net, ``lan`` the host's link to its router.
        ``lan_subnet`` defaults to 10.<n>.0.0/24 (distinct per home); pass the same one twice to get
        two homes with identical private addresses, as in real life.
        """
        if nat not in NAT_MODES:
            raise ValueError(f"nat must be one of {NAT_MODES}, got {nat!r}")
        if name in self.homes or not re.fullmatch(r"[a-z][a-z0-9]{0,7}", name):
            raise ValueError(f"home name must be new and match [a-z][a-z0-9]{{0,7}}, got {name!r}")
        if nat == "none":
            host = self.public_host(f"{name}h", link=wan)
            home = Home(name, nat, host, None, None)
            self.homes[name] = home
            return home
        net = ipaddress.ip_network(lan_subnet or f"10.{len(self.homes) + 1}.0.0/24")
        hosts = net.hosts()
        lan_ip, host_ip = str(next(hosts)), str(next(hosts))
        r_ns = self._add_ns(f"{name}r")
        h_ns = self._add_ns(f"{name}h")
        wan_ip = self._attach_public(r_ns, "wan", wan)
        self._link(h_ns, "eth0", r_ns, "lan", lan)
        self._ip(r_ns, f"addr add {lan_ip}/{net.prefixlen} dev lan", "link set lan up")
        self._ip(
            h_ns,
            f"addr add {host_ip}/{net.prefixlen} dev eth0",
            "link set eth0 up",
            f"route add default via {lan_ip}",
        )
        self.sysctl(r_ns, "net/ipv4/ip_forward=1")
        self.nft(r_ns, nat_ruleset(nat, host_ip))
        home = Home(name, nat, Host(f"{name}h", h_ns, host_ip, wan_ip), Host(f"{name}r", r_ns, wan_ip, wan_ip), lan_ip)
        self.homes[name] = home
        return home

    def lan_host(self, home: str, name: str) -> Host:
        """Another machine on ``home``'s LAN (a phone next to the server), behind the same router.

        The router's LAN side becomes a bridge (``br0``, holding the router's LAN address) with the
        first host's link and this one's as ports, so LAN broadcast and multicast (mDNS) reach every
        host of the home and stop at the router. Addresses: .3, .4, ... of the home's LAN subnet.
        """
        h = self.homes[home]
        if h.router is None or h.lan_ip is None:
            raise ValueError(f"home {home!r} has no router (nat='none'): it has no LAN")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", name):
            raise ValueError(f"host name must match [a-z][a-z0-9]{{0,7}}, got {name!r}")
        r_ns = h.router.ns
        net = ipaddress.ip_interface(f"{h.lan_ip}/24").network
        extra = self._lan_hosts.get(home, 0)
        self._lan_hosts[home] = extra + 1
        ip = str(net.network_address + 3 + extra)
        port = f"lan{extra + 2}"
        if extra == 0:  # first extra host: turn the router's LAN side into a bridge
            self._ip(
                r_ns,
                "link add br0 type bridge mcast_snooping 0",
                f"addr del {h.lan_ip}/{net.prefixlen} dev lan",
                "link set lan master br0",
                f"addr add {h.lan_ip}/{net.prefixlen} dev br0",
                "link set br0 up",
            )
        ns = self._add_ns(f"{home}l{name}")
        self._link(ns, "eth0", r_ns, port, None)
        self._ip(r_ns, f"link set {port} master br0", f"link set {port} up")
        self._ip(ns, f"addr add {ip}/{net.prefixlen} dev eth0", "link set eth0 up", f"route add default via {h.lan_ip}")
        return Host(name, ns, ip, h.router.ip)

    # -- processes -----------------------------------------------------------------------------

    def spawn(
        self,
        where: str | Host,
        argv: Sequence[str],
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = LOG,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = REPO,
        text: bool = True,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside a namespace (``ip netns exec``); the Popen's pid is the command itself.

        stdin and stdout are pipes (read stdout with expect_line() or communicate()); stderr goes to a
        file in ``logdir`` (read it with log()), so a chatty process never blocks on a full pipe.
        Killed (by PID) in close(), and also by the kernel if this Python process dies (PDEATHSIG).
        """
        ns = where.ns if isinstance(where, Host) else where
        log_path = None
        if stderr is LOG:
            assert self.logdir is not None
            self._spawned += 1
            log_path = self.logdir / f"{self._spawned:03d}-{ns.rpartition('-')[2]}-{Path(argv[0]).name}.stderr"
            stderr = log_path.open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            text=text,
            preexec_fn=_die_with_parent,
        )
        if log_path is not None:
            stderr.close()
            _logs[proc.pid] = log_path
        self.procs.append(proc)
        return proc

    def run(
        self, where: str | Host, argv: Sequence[str], *, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in a namespace to completion (killed by PID if it overruns ``timeout``).

        stdout and stderr are captured (stderr as a pipe here, not a log file)."""
        proc = self.spawn(where, argv, stdin=kw.pop("stdin", subprocess.DEVNULL), stderr=subprocess.PIPE, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RigError(
                f"{' '.join(argv)} in {where} timed out after {timeout}s\nstdout: {out}\nstderr: {err}"
            ) from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def wait_file(self, path: Path, proc: subprocess.Popen[Any], timeout: float = 30.0) -> str:
        """Wait until ``path`` holds text (e.g. ``--url-file`` / ``--ticket-file``); fail if ``proc`` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text().strip() if path.exists() else ""
            if text:
                return text
            if proc.poll() is not None:
                raise RigError(f"pid {proc.pid} exited ({proc.returncode}) before writing {path}{_stderr(proc)}")
            time.sleep(0.02)  # no event for "a file appeared" without inotify; bounded by the deadline
        raise RigError(f"{path} still empty after {timeout}s{_stderr(proc)}")

    def log(self, proc: subprocess.Popen[Any]) -> str:
        """What ``proc`` wrote to stderr so far (when spawned with the default stderr)."""
        path = _logs.get(proc.pid)
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def python(self, where: str | Host, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """``spawn`` this venv's Python: e.g. ``rig.python(h, "-m", "asgi_p2p", "relay")``."""
        return self.spawn(where, [sys.executable, *args], **kw)

    def serve(
        self, where: str | Host, ticket_file: Path, *args: str, env: dict[str, str]
    ) -> tuple[subprocess.Popen[Any], str]:
        """Start ``asgi-p2p <args> --ticket-file F`` (``serve`` or an app) and wait for its ticket."""
        proc = self.python(where, "-m", "asgi_p2p", *args, "--ticket-file", str(ticket_file), env=env)
        return proc, self.wait_file(ticket_file, proc, timeout=60)

    def udptool(self, where: str | Host, *args: str) -> subprocess.Popen[Any]:
        return self.python(where, str(UDPTOOL), *args)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every spawned process (by PID), delete every namespace. Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            _buffers.pop(proc.pid, None)
            _logs.pop(proc.pid, None)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        self.procs.clear()
        self.delay_lines.clear()
        errors = []
        for ns in reversed(self.namespaces):
            res = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=30)
            if res.returncode != 0 and ns in list_namespaces():
                errors.append(f"{ns}: {res.stderr.strip()}")
        self.namespaces.clear()
        if self._allowed_cc_change is not None:  # the namespaces that needed it are gone
            restore_tcp_allowed_congestion_control(self._allowed_cc_change)
            self._allowed_cc_change = None
        if self._own_logdir and self.logdir is not None:
            shutil.rmtree(self.logdir, ignore_errors=True)
        if errors:
            raise RigError("could not delete namespaces: " + "; ".join(errors))


def loss_ruleset(ifname: str, pct: int) -> str:
    """The nftables table that drops ``pct``% of the packets arriving on ``ifname``, counting both."""
    return f"""table inet impair_{ifname} {{
    chain pre {{
        type filter hook prerouting priority -300; policy accept;
        iifname "{ifname}" counter
        iifname "{ifname}" numgen random mod 100 < {pct} counter drop
    }}
}}
"""


def nat_ruleset(nat: str, host_ip: str) -> str:
    """The router's nftables ruleset for a NAT mode (the WAN interface is "wan")."""
    masq = "masquerade random" if nat == "symmetric" else "masquerade"
    rules = f"""table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masq}
    }}
"""
    if nat == "eim-fullcone":
        # endpoint-independent filtering: every inbound UDP packet to the WAN address goes to the one
        # host at the same port; masquerade keeps the host's source port when free, so this is the
        # host's mapping (a "DMZ host" / full cone).
        rules += f"""    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" udp dport 1-65535 dnat to {host_ip}
    }}
"""
    rules += "}\n"
    if nat in ("eim", "symmetric"):
        # a home router's firewall: drop unsolicited inbound packets before conntrack confirms them
        rules += """table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" counter drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" counter drop
    }
}
"""
    return rules


def expect_line(proc: subprocess.Popen[Any], pattern: str, timeout: float = 10.0) -> re.Match[str]:
    """Read ``proc``'s stdout line by line until one matches ``pattern`` (re.search); fail on EOF or timeout.

    Reads the pipe's file descriptor directly (do not mix with proc.stdout.read*). Lines before the
    match are discarded.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = _buffers.setdefault(proc.pid, bytearray())
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        while b"\n" in buf:
            raw, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            line = raw.decode(errors="replace")
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            raise RigError(f"timeout waiting for {pattern!r} from pid {proc.pid}; got {seen[-20:]}{_stderr(proc)}")
        chunk = os.read(fd, 65536)
        if not chunk:
            proc.wait(timeout=5)
            raise RigError(
                f"pid {proc.pid} exited ({proc.returncode}) before printing {pattern!r}; got {seen[-20:]}"
                + _stderr(proc)
            )
        buf += chunk


def _stderr(proc: subprocess.Popen[Any]) -> str:
    path = _logs.get(proc.pid)
    if path is not None:
        text = path.read_text(errors="replace") if path.exists() else ""
    elif proc.stderr is not None and proc.poll() is not None:
        err = proc.stderr.read()
        text = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
    else:
        return ""
    return "\nstderr: " + text[-2000:]
