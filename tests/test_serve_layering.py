"""The service is a layer on top of the runtime: the runtime never imports it, and it imports no torch stack
and none of the tools (export, quantize, bench)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_SERVE = ("torch", "diffusers", "transformers", "safetensors", "accelerate", "peft", "nncf", "onnx")
TOOLS = ("instantid_edge.export", "instantid_edge.quantize", "instantid_edge.bench")


def _imports(folder: Path):
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path, alias.name, 0) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield path, node.module or "", node.level


def test_the_runtime_does_not_import_the_service():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, name, level in _imports(ROOT / "runtime")
        if name.startswith("instantid_edge.serve") or (level >= 2 and name.startswith("serve"))
    ]
    assert not offenders


def test_the_service_imports_no_torch_stack_and_no_tools():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, name, level in _imports(ROOT / "serve")
        if level == 0 and (name.split(".")[0] in FORBIDDEN_IN_SERVE or name.startswith(TOOLS))
    ]
    assert not offenders
