# The README's two commands: `make demo` (offline notebook run) and `make test` (pytest).
# Both create or reuse .venv/, reinstall requirements.txt only when it or pyproject.toml changed, and install the kit
# itself in editable mode (pip install -e .), so scripts outside the checkout import it.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/requirements.installed
PIP := $(VPY) -m pip install --disable-pip-version-check -q
# Where torch and torchvision come from. Empty: PyPI, whose Linux build carries CUDA (about 5.5 GB).
# A laptop without a GPU can take the CPU build: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PINS = $$(grep -E '^torch(vision)?==' requirements.txt)

.PHONY: demo test venv browser clean-outputs

venv:
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@if cat requirements.txt pyproject.toml | cmp -s - $(STAMP); then \
		echo "venv: requirements unchanged"; \
	else \
		if [ -n "$(TORCH_INDEX)" ]; then $(PIP) --index-url $(TORCH_INDEX) $(TORCH_PINS) || exit 1; fi; \
		$(PIP) -r requirements.txt && $(PIP) --no-deps --no-build-isolation -e . && cat requirements.txt pyproject.toml > $(STAMP); \
	fi

demo: venv
	$(VPY) -m helpers.run_notebook --preset params/offline_demo.yaml --overwrite

# The app's browser test (tests/test_app.py) drives Debian's chromium with Playwright: installed here when missing,
# where apt-get runs as root (CI); elsewhere the test skips, saying how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			start=$$(date +%s); \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || exit 1; \
			echo "browser: chromium installed in $$(( $$(date +%s) - start )) s"; \
		else echo "browser: chromium is missing and apt-get cannot run as root here; the browser test will skip"; fi; }

test: venv browser
	$(VPY) -m pytest -q tests

clean-outputs:
	rm -rf outputs/*/ outputs/.offline_models outputs/.tool_cache
