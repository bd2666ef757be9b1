"""The runtime must work where torch is not installed: importing it (and the CLI) loads none of the torch stack.

What the sources import, relative imports included, is checked in tests/test_layers.py.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import instantid_edge.runtime as runtime_package

FORBIDDEN = ("torch", "diffusers", "transformers", "safetensors", "accelerate", "peft", "nncf")


def test_importing_the_runtime_and_the_cli_loads_no_torch():
    modules = [m.name for m in pkgutil.walk_packages(runtime_package.__path__, "instantid_edge.runtime.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules + ['instantid_edge.cli']!r}: importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
