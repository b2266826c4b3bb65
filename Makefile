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

.PHONY: demo test venv clean-outputs

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

test: venv
	$(VPY) -m pytest -q tests

clean-outputs:
	rm -rf outputs/*/ outputs/.offline_models outputs/.tool_cache
