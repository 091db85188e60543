# asgi-p2p: `make demo` runs the main job, `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest swarm bench clean sysdeps

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the tests start for real: nftables/iproute2 (netns rig), nginx (a non-Python
# backend behind `asgi-p2p proxy`), chromium + chromedriver (browser through `asgi-p2p gateway`),
# prometheus (promtool checks docs/ops rules), knot (a real authoritative DNS server), systemd
# (systemd-analyze verifies the units in deploy/systemd), gcc + libc6-dev (the netns rig's delay
# line, tests/netns/delayline.c).
SYSDEPS := nftables iproute2 nginx-light chromium chromium-driver prometheus knot knot-dnsutils systemd gcc libc6-dev
SYSDEPS_CMDS := nft ip tc nginx chromium chromedriver promtool knotd kdig systemd-analyze gcc

sysdeps:
	@if [ "$$(id -u)" = 0 ]; then \
		missing=0; for c in $(SYSDEPS_CMDS); do command -v $$c >/dev/null 2>&1 || missing=1; done; \
		if [ $$missing = 1 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSDEPS) >/dev/null) \
			|| echo "warning: could not install $(SYSDEPS)"; fi; fi

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check asgi_p2p

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests/test_protocols.py  # static conformance to the Protocol classes

pytest: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint typecheck pytest

# the slower job: the swarm over 200 seeds per loss band (600 runs, about 5 min of CPU);
# `make test` runs 50 seeds in all
swarm: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/sim/test_swarm.py --sim-seeds 200

bench: $(STAMP)
	$(BIN)/python benchmarks/transport.py

clean:
	rm -rf $(VENV) build *.egg-info
