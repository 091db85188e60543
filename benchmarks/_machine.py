"""The machine a benchmark ran on, for the line every table prints above itself."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """lscpu's model name (``/proc/cpuinfo`` without lscpu)."""
    model = _lscpu().get("Model name")
    if model:
        return model
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def machine_description() -> str:
    """CPU model, cores, hypervisor, kernel, Python, aioquic, and the load average now."""
    info = _lscpu()
    import aioquic

    hypervisor = info.get("Hypervisor vendor")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores"
        + (f" ({hypervisor} VM)" if hypervisor else "")
        + f", Linux {platform.release()}, Python {platform.python_version()}, aioquic {aioquic.__version__}; "
        f"load average (1/5/15 min) at the start: {load_average()} (the machine is shared: "
        "other jobs run during the benchmark)"
    )
