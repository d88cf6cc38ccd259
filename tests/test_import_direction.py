"""Every module of autofocus_d2 imports, and the packages import each other in one direction only:

* ``structures`` (geometry and rules) is the bottom: it imports nothing of the package but
  ``config_checks``;
* ``pipeline_registry`` sits below modeling and inference and imports only ``config``;
* ``modeling`` imports nothing of ``inference`` (it builds its pipeline through the registry), nor
  of the packages above it;
* ``inference`` imports nothing of ``modeling`` (it talks to a model through ``FocusDetector``);
* ``data`` imports nothing of ``inference``.
"""
import ast
import importlib
import pkgutil
from typing import Dict, Set

import pytest

import autofocus_d2

UPPER = {"analysis", "benchmark", "data", "evaluation", "inference", "integrations", "model_zoo", "modeling",
         "prediction", "tuning", "utils", "export", "checkpoint"}
# package -> the first-level parts of autofocus_d2 it must not import.
FORBIDDEN: Dict[str, Set[str]] = {
    "structures": UPPER | {"config", "pipeline_registry"},
    "pipeline_registry": UPPER | {"structures"},
    "modeling": UPPER - {"modeling"},
    "inference": {"modeling", "data", "analysis", "benchmark", "tuning", "prediction", "model_zoo"},
    "data": {"modeling", "inference", "analysis", "benchmark", "tuning", "prediction"},
}


def _modules():
    return [m.name for m in pkgutil.walk_packages(autofocus_d2.__path__, "autofocus_d2.")]


def imported_parts(module_name: str, source: str, is_package: bool) -> Set[str]:
    """The first-level parts of autofocus_d2 (``inference``, ``config``, ...) that the source of
    ``module_name`` imports, relative imports resolved."""
    package = module_name.split(".") if is_package else module_name.split(".")[:-1]
    parts = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name.split(".")
                if target[0] == "autofocus_d2" and len(target) > 1:
                    parts.add(target[1])
            continue
        else:
            continue
        if target[0] != "autofocus_d2":
            continue
        if len(target) > 1:
            parts.add(target[1])
        else:  # from autofocus_d2 import inference
            parts.update(names)
    return parts


def test_every_module_imports():
    names = _modules()
    assert "autofocus_d2.structures.views" in names and "autofocus_d2.pipeline_registry" in names
    for name in names:
        importlib.import_module(name)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_go_one_way(part):
    violations = []
    for name in _modules():
        pieces = name.split(".")
        if pieces[1] != part:
            continue
        module = importlib.import_module(name)
        with open(module.__file__) as f:
            source = f.read()
        bad = imported_parts(name, source, module.__file__.endswith("__init__.py")) & FORBIDDEN[part]
        violations += [f"{name} imports autofocus_d2.{b}" for b in sorted(bad)]
    assert not violations, violations


def test_the_checker_sees_relative_and_absolute_imports():
    src = "from ..inference.pipeline import X\nimport autofocus_d2.data\nfrom autofocus_d2 import utils\nfrom . import y"
    assert imported_parts("autofocus_d2.modeling.focus_detector", src, False) == {"inference", "data", "utils",
                                                                                 "modeling"}
    assert imported_parts("autofocus_d2.structures", "from ..config import x", True) == {"config"}


def test_import_autofocus_d2_registers_the_pipeline():
    from autofocus_d2.pipeline_registry import AUTOFOCUS_PIPELINE_REGISTRY

    assert "CoarseToFinePipeline" in AUTOFOCUS_PIPELINE_REGISTRY
