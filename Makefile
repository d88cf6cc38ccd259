# Two commands for a newcomer: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards. To use your own environment instead:
#   make test PYTHON=python     (it needs torch and torchvision; detectron2 is installed if missing)
VENV         := .venv
PYTHON       ?= $(VENV)/bin/python
TORCH_PINS   := torch==2.14.1 torchvision==0.29.1
EXTRAS       := test,bench
DEMO_OUTPUT  := output/demo
# e.g. make demo DEMO_ARGS=--with-masks (also the Mask R-CNN model: box and mask AP)
DEMO_ARGS    ?=

ifeq ($(PYTHON),$(VENV)/bin/python)
ENV_READY := $(VENV)/.setup-done
else
ENV_READY := own-env
endif

.PHONY: demo test setup own-env clean-venv

setup: $(ENV_READY)

$(VENV)/.setup-done: setup.py tools/install_detectron2.py
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(TORCH_PINS) 'setuptools<81'
	$(VENV)/bin/python tools/install_detectron2.py
	$(VENV)/bin/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

own-env:
	$(PYTHON) -c "import torch, torchvision" || { echo "PYTHON=$(PYTHON) has no torch/torchvision"; exit 1; }
	$(PYTHON) tools/install_detectron2.py
	$(PYTHON) -m pip install -e '.[$(EXTRAS)]'

test: $(ENV_READY)
	$(PYTHON) -m pytest tests -q

demo: $(ENV_READY)
	$(PYTHON) tools/run_demo.py --output $(DEMO_OUTPUT) $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
