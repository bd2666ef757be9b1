"""`instantid-edge serve` refuses a bad set-up with exit code 1 and one line, before or while it starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install '.[serve]'")

from click.testing import CliRunner  # noqa: E402
from serving import free_port  # noqa: E402

from instantid_edge.cli import cli  # noqa: E402
from instantid_edge.serve.cli import is_loopback  # noqa: E402


def _refused(args, *messages):
    result = CliRunner().invoke(cli, ["serve", *map(str, args)])
    assert result.exit_code == 1, result.output
    assert all(m in result.output for m in messages) and len(result.output.strip().splitlines()) == 1, result.output


def test_bad_set_ups_fail_before_serving(tmp_path, runtime_package, face_pack):
    base = ["--package", runtime_package, "--face-models", face_pack, "--port", free_port()]
    _refused(["--package", tmp_path / "nothing", "--port", free_port()], "nothing")
    short = tmp_path / "token"
    short.write_text("abc\n")
    _refused([*base, "--token-file", short], "at least 16 characters")
    _refused([*base, "--token-file", tmp_path / "absent"], "cannot read --token-file")
    styles = tmp_path / "styles.json"
    styles.write_text('{"styles": [{"name": "a", "prompt": "no placeholder"}]}')
    _refused([*base, "--styles", styles], "{prompt} exactly once")


def test_a_profile_the_package_does_not_have_is_refused_before_serving(runtime_package, face_pack):
    # the tiny package has no few-step distillation fused, so its manifest marks `fast` unavailable, with why
    base = ["--package", runtime_package, "--face-models", face_pack, "--port", free_port()]
    _refused([*base, "--profile", "fast"], "--profile fast is unavailable", "no few-step distillation is fused")
    result = CliRunner().invoke(cli, ["serve", *map(str, base), "--profile", "turbo"])
    assert result.exit_code == 2 and "'turbo' is not one of 'fast', 'quality'" in result.output, result.output


def test_a_package_that_cannot_load_stops_the_server_with_exit_1(runtime_package, tmp_path):
    command = [sys.executable, "-m", "instantid_edge.cli", "serve", "--package", str(runtime_package),
               "--face-models", str(tmp_path / "no-pack"), "--port", str(free_port())]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: no insightface face pack at"), done.stderr


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("kiosk.local")
