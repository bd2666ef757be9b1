"""The command line: every command's --help (quick: no model library imported), and `demo` end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

# --help must not import a model library: it stays instant and works where the extras are not installed
HEAVY = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "insightface")


HELP_CHECK = """
import sys
import click
from click.testing import CliRunner
from instantid_edge.cli import cli, EXTRA_OF, LAZY_COMMANDS

result = CliRunner().invoke(cli, ["--help"])
assert result.exit_code == 0 and all(name in result.output for name in LAZY_COMMANDS), result.output
commands, groups = [], []
for name in LAZY_COMMANDS:
    try:
        command = cli.get_command(None, name)
    except click.ClickException as exc:  # a command of an extra not installed here says which one to install
        assert name in EXTRA_OF and f"pip install 'instantid-edge[{EXTRA_OF[name]}]'" in exc.message, exc.message
        continue
    subcommands = getattr(command, "commands", {})
    (groups if subcommands else commands).append([name])
    commands += [[name, sub] for sub in subcommands]
for args in commands + groups:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)
    assert "Usage: cli " + " ".join(args) in result.output, (args, result.output)
    assert args in groups or "Example" in result.output, (args, result.output)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
assert not loaded, loaded
"""


def test_every_command_has_help_with_an_example_and_imports_no_model_library():
    """Every command and every subcommand of a group (`provenance init`); a group's own help lists them. A command
    whose extra is not installed (serve without fastapi) must say which extra to install instead."""
    subprocess.run([sys.executable, "-c", HELP_CHECK, *HEAVY], check=True)


@pytest.mark.torch
def test_demo_builds_exports_and_generates_then_reuses_its_package(tmp_path, face_pack):
    """Without --face-models the demo picks the shared test pack (the test session points the library at the
    shared assets), which pairs with a 128-d stand-in."""
    from click.testing import CliRunner

    from instantid_edge.cli import cli
    from instantid_edge.runtime.provenance import read_record

    out, work = tmp_path / "demo.png", tmp_path / "work"
    args = ["demo", "--out", str(out), "--work", str(work), "--steps", "2", "--size", "128", "--backend", "onnxruntime"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "building a tiny random-weight stand-in" in first.output and "TEST face pack" in first.output
    record = read_record(out)
    assert record["generator"] == "demo, runtime (onnxruntime)" and record["standin"] is True
    assert record["settings"]["width"] == 128 and record["settings"]["steps"] == 2
    assert "astronaut" in record["inputs"]["face photo"]
    assert sorted(p.name for p in work.iterdir()) == ["package-tiny-128", "standin-tiny-128"]

    again = CliRunner().invoke(cli, [*args[:2], str(tmp_path / "again.png"), *args[3:]])
    assert again.exit_code == 0, again.output
    assert "building" not in again.output and "exporting" not in again.output
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
