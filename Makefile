# Two commands for a fresh machine: `make demo` and `make test` (both set everything up first).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
ART := artifacts
DEMO_MODEL := $(ART)/tiny_smolvla
DEMO_BAG := $(ART)/demo_bag
export PYTHONUNBUFFERED := 1
# Keep each test's DDS traffic on this machine and apart from other runs.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test test-timing lint format demo demo-sim colcon-build bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-lock.txt setup.py
	@# Headless rendering for the MuJoCo simulator: Mesa's EGL (installed once, as root, Debian).
	if ! ldconfig -p | grep -q libEGL_mesa.so.0 && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libegl1 libegl-mesa0 libgl1 libgbm1; fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt -c requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not timing" test

# Wall-clock rate and duration checks: meaningful on an idle machine only.
test-timing: setup
	$(BIN)/python -m pytest -q -m timing test

$(DEMO_MODEL)/model.safetensors: | setup
	$(BIN)/kuavo-smolvla-make-demo-model $(DEMO_MODEL) --size tiny

$(DEMO_BAG)/metadata.yaml: | setup
	$(BIN)/kuavo-smolvla-make-demo-bag $(DEMO_BAG)

demo: setup $(DEMO_MODEL)/model.safetensors $(DEMO_BAG)/metadata.yaml
	$(BIN)/python -m kuavo_smolvla_ros.demo.pipeline --model $(DEMO_MODEL) --bag $(DEMO_BAG) --out $(ART)/demo

# Closed loop on a CPU: expert demos in the simulator -> fine-tuned tiny model -> success rates.
demo-sim: setup $(DEMO_MODEL)/model.safetensors
	$(BIN)/python -m kuavo_smolvla_ros.sim.demo --model $(DEMO_MODEL) --out $(ART)/demo_sim

colcon-build: setup
	source $(BIN)/activate && colcon build --base-paths . --build-base $(ART)/colcon/build --install-base $(ART)/colcon/install

clean:
	rm -rf $(ART) build install log .pytest_cache
