#!/usr/bin/env python
"""autofocus-d2: AutoFocus (Najibi, Singh, Davis, ICCV 2019) as a Detectron2 plugin.

Detectron2 itself is not on PyPI and is therefore not listed in ``install_requires``: install it
first (``python tools/install_detectron2.py`` picks the best available path, see README.md).
"""
from setuptools import find_packages, setup

setup(
    name="autofocus-d2",
    version="0.1.0",
    description="AutoFocus efficient multi-scale inference for Detectron2",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # The configs ship inside the package, as autofocus_d2/model_zoo/configs, mapped from the
    # top-level configs/ directory (no copy or symlink in the source tree); a source checkout or an
    # editable install reads configs/ itself (autofocus_d2/model_zoo/model_zoo.py: configs_dir).
    packages=find_packages(include=["autofocus_d2", "autofocus_d2.*"])
    + ["autofocus_d2.model_zoo.configs"],
    package_dir={"autofocus_d2.model_zoo.configs": "configs"},
    package_data={
        # the manifest and the released reference checkpoints it names (relative urls)
        "autofocus_d2": ["model_zoo/*.json", "model_zoo/released/*/*/*/*"],
        # yacs configs, and the LazyConfig .py configs with their shared parts (common/*/*.py).
        "autofocus_d2.model_zoo.configs": ["*.yaml", "*/*.yaml", "*/*.py", "*/*/*.py"],
    },
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "numpy",
    ],
    extras_require={
        # test-suite: pytest runs it, hypothesis drives the property tests of chip generation.
        "test": ["pytest", "hypothesis"],
        # tools/benchmark.py: SAHI for the sliced-inference baseline row.
        "bench": ["sahi"],
    },
)
