"""The runtime must work where torch is not installed: nothing in it may import torch or its companions."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import instantid_edge.runtime as runtime_package

FORBIDDEN = ("torch", "diffusers", "transformers", "safetensors", "accelerate", "peft", "nncf")


def test_runtime_sources_import_no_torch_stack():
    offenders = []
    for path in Path(runtime_package.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_importing_the_runtime_and_the_cli_loads_no_torch():
    modules = [m.name for m in pkgutil.walk_packages(runtime_package.__path__, "instantid_edge.runtime.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules + ['instantid_edge.cli']!r}: importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_is_lazy():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom instantid_edge.cli import cli\n"
        "result = CliRunner().invoke(cli, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert 'standin' in result.output and 'reference' in result.output\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
