"""The layers' boundaries: who may import whom (relative imports included), and every import declared.

runtime imports nothing from the other layers and never the torch stack; tools (shared by export, quantize and
bench) may use the runtime; quantize and bench may use the runtime and tools; only export and bench's PyTorch
peer need torch. These checks read the sources (every import statement, also those inside functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"runtime": ROOT / "runtime", "tools": ROOT / "tools", "export": ROOT / "export",
          "quantize": ROOT / "quantize", "bench": ROOT / "bench", "serve": ROOT / "serve"}  # fmt: skip
# Which parts of instantid_edge each layer may import (besides the package root, for __version__).
# quantize reads and writes ONNX files with export's torch-free onnx_files helper.
ALLOWED = {
    "runtime": {"runtime"},
    "tools": {"tools", "runtime"},
    "export": {"export", "runtime", "tools"},
    "quantize": {"quantize", "runtime", "tools", "export.onnx_files"},
    "bench": {"bench", "runtime", "tools", "export", "quantize"},
    "serve": {"serve", "runtime"},  # the service is a layer on the runtime alone (and needs no torch)
}
TORCH_STACK = ("torch", "diffusers", "transformers", "safetensors", "accelerate", "peft", "nncf")
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"cv2": "opencv-python", "PIL": "pillow", "skimage": "scikit-image", "c2pa": "c2pa-python",
                 "python_multipart": "python-multipart"}  # fmt: skip


def imported_modules(source: str, package: str) -> list[str]:
    """Absolute names of every module `source` imports, relative imports resolved against `package`."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module)
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            # `from .. import x` may import a module x of that package: count it as one
            names += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return names


def _sources(layer: str):
    """(file, the modules it imports) for every source file of a layer, subpackages included."""
    for path in sorted(LAYERS[layer].rglob("*.py")):
        package = ".".join(("instantid_edge", *path.parent.relative_to(ROOT).parts))
        yield path, imported_modules(path.read_text(), package)


def _part(module: str) -> str | None:
    """The instantid_edge part a module belongs to ("runtime", "export.onnx_files", ...), None for the root."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts else None


@pytest.mark.parametrize(
    "source, package, expected",
    [
        ("from ..export import standin", "instantid_edge.runtime", ["instantid_edge.export"]),
        ("from ..export.package import x", "instantid_edge.runtime", ["instantid_edge.export.package"]),
        ("from .. import __version__", "instantid_edge.runtime", ["instantid_edge.__version__"]),
        ("from .manifest import x", "instantid_edge.runtime", ["instantid_edge.runtime.manifest"]),
        ("from ..files import x", "instantid_edge.runtime.provenance", ["instantid_edge.runtime.files"]),
        ("from ...export import x", "instantid_edge.runtime.provenance", ["instantid_edge.export"]),
        ("def f():\n    import torch.nn", "instantid_edge.runtime", ["torch.nn"]),
    ],
)
def test_the_checker_resolves_relative_and_nested_imports(source, package, expected):
    assert imported_modules(source, package) == expected


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_imports_only_the_layers_it_may(layer):
    offenders = []
    for path, modules in _sources(layer):
        for module in modules:
            if not module.startswith("instantid_edge.") or module == "instantid_edge.__version__":
                continue
            part = _part(module)
            if not any(part == allowed or part.split(".")[0] == allowed for allowed in ALLOWED[layer]):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders


@pytest.mark.parametrize("layer", ["runtime", "tools", "serve"])
def test_runtime_and_tools_never_import_the_torch_stack(layer):
    offenders = [f"{path.name}: {module}" for path, modules in _sources(layer) for module in modules
                 if module.split(".")[0] in TORCH_STACK]  # fmt: skip
    assert not offenders


def _declared() -> dict[str, set[str]]:
    """Distribution names per dependency group of pyproject.toml ("base" for the runtime's own)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {req.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
                for req in requirements}  # fmt: skip

    groups = {"base": names(project["dependencies"])}
    groups |= {extra: names(reqs) for extra, reqs in project["optional-dependencies"].items()}
    return groups


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_third_party_import_is_declared(layer):
    declared = _declared()
    anywhere = set().union(*declared.values())
    # the runtime and tools install with `pip install .`, the service with the `serve` extra: their imports must
    # be in the base dependencies or in an extra that brings no torch (such as `sign` and `serve`)
    torch_free = set().union(*(reqs for reqs in declared.values() if "torch" not in reqs))
    allowed = torch_free if layer in ("runtime", "tools", "serve") else anywhere
    undeclared = set()
    for path, modules in _sources(layer):
        for module in modules:
            top = module.split(".")[0]
            if top == "instantid_edge" or top in sys.stdlib_module_names or top == "__future__":
                continue
            if DISTRIBUTIONS.get(top, top).lower() not in allowed:
                undeclared.add(f"{path.relative_to(ROOT)}: {top}")
    assert not undeclared
