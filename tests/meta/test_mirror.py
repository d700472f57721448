"""The two trees mirror each other (specs/conventions.md §8).

- every reference module has a detector twin with the same public names;
- twins take the same parameters in the same order (the detector may add the
  keyword-only ``device``, ``dtype``, ``max_elements``, ``batched``, and ``valid``, the mask
  of the GT slots that hold a GT in a padded batch);
- the definitions (top-level functions and classes, public and private) that a module and
  its twin share appear in the same relative order, so that ``diff`` lines them up (a twin
  may add definitions in between);
- reference/ never imports torch; detector/ never imports reference;
- the named constants are equal.
"""
import ast
import importlib
import inspect
import math
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DETECTOR_ONLY_PARAMETERS = {"device", "dtype", "max_elements", "batched", "valid"}


def _python_files(tree):
    return sorted(p for p in (ROOT / tree).rglob("*.py"))


def _imported_modules(path):
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("path", _python_files("reference"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reference_never_imports_torch(path):
    assert not {"torch", "torchvision", "detector"} & _imported_modules(path)


def test_detector_never_imports_reference():
    offenders = [str(p.relative_to(ROOT)) for p in _python_files("detector") if "reference" in _imported_modules(p)]
    assert offenders == []


def _reference_modules():
    import reference

    names = []
    for info in pkgutil.walk_packages(reference.__path__, "reference."):
        if not info.ispkg:
            names.append(info.name)
    return sorted(names)


def _public_functions(module):
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__
    }


@pytest.mark.parametrize("name", _reference_modules())
def test_every_reference_module_has_a_twin_with_the_same_signatures(name):
    pytest.importorskip("torch")
    reference_module = importlib.import_module(name)
    detector_module = importlib.import_module("detector" + name[len("reference") :])
    reference_api = _public_functions(reference_module)
    detector_api = _public_functions(detector_module)
    missing = sorted(set(reference_api) - set(detector_api))
    assert missing == [], f"{detector_module.__name__} lacks {missing}"
    for function_name, reference_function in reference_api.items():
        if inspect.isclass(reference_function):
            continue
        reference_parameters = list(inspect.signature(reference_function).parameters)
        detector_parameters = [
            p for p in inspect.signature(detector_api[function_name]).parameters if p not in DETECTOR_ONLY_PARAMETERS
        ]
        assert detector_parameters == reference_parameters, function_name


def _definitions(path):
    """Names of the top-level functions and classes of a module, in file order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _shared_in_order(reference_names, detector_names):
    """The names both lists hold, in each list's order: equal lists mean the same order."""
    shared = set(reference_names) & set(detector_names)
    return [n for n in reference_names if n in shared], [n for n in detector_names if n in shared]


def test_order_check_sees_a_swap():
    reference_names = ["assign", "select", "_helper"]
    reference_order, detector_order = _shared_in_order(reference_names, ["assign", "assign_batched", "select", "_fast", "_helper"])
    assert detector_order == reference_order  # extra definitions in between are fine
    reference_order, detector_order = _shared_in_order(reference_names, ["select", "assign", "_helper"])
    assert detector_order != reference_order


@pytest.mark.parametrize("path", _python_files("reference"), ids=lambda p: str(p.relative_to(ROOT)))
def test_shared_definitions_appear_in_the_same_order(path):
    # AST only, no import: runs in the reference environment too
    twin = ROOT / "detector" / path.relative_to(ROOT / "reference")
    if not twin.exists():
        pytest.fail(f"{path.relative_to(ROOT)} has no twin {twin.relative_to(ROOT)}")
    reference_order, detector_order = _shared_in_order(_definitions(path), _definitions(twin))
    assert detector_order == reference_order, f"{twin.relative_to(ROOT)} orders the shared definitions differently"


def test_conventions_are_equal():
    pytest.importorskip("torch")
    from detector import conventions as detector_conventions
    from reference import conventions as reference_conventions

    reference_names = {k: v for k, v in vars(reference_conventions).items() if k.isupper()}
    detector_names = {k: v for k, v in vars(detector_conventions).items() if k.isupper()}
    assert reference_names.keys() == detector_names.keys()
    for key, value in reference_names.items():
        assert detector_names[key] == value or (isinstance(value, float) and math.isclose(value, detector_names[key])), key
