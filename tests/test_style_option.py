"""`generate --style NAME` and `instantid-edge styles`: the shipped style file (runtime/styles.json) applied as
InstantID's app applies its templates (gradio_demo/app.py apply_style: the prompt put in the template, the
style's negative prompt with the user's)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from instantid_edge.cli import cli
from instantid_edge.runtime.cli_options import settings_from_options
from instantid_edge.runtime.styles import load_styles


def _options(**given) -> dict:
    base = {"face": Path("f.png"), "out": Path("o.png"), "face_models": None, "latents": None, "save_latents": None,
            "init_image": None, "prompt": "an astronaut", "negative_prompt": None}  # fmt: skip
    return {**base, **given}


def test_a_style_wraps_the_prompt_as_by_hand():
    watercolor = load_styles().get("watercolor")
    before, after = watercolor.prompt.split("{prompt}")
    settings, _ = settings_from_options(_options(style="watercolor"))
    assert settings.prompt == before + "an astronaut" + after
    assert settings.negative_prompt == watercolor.negative_prompt
    settings, _ = settings_from_options(_options(style="watercolor", negative_prompt="blurry"))
    assert settings.negative_prompt == watercolor.negative_prompt + ", blurry"
    plain, _ = settings_from_options(_options(style=None))
    assert (plain.prompt, plain.negative_prompt) == ("an astronaut", None)


def test_an_unknown_style_is_one_line_listing_the_names(tmp_path):
    args = ["generate", "--package", tmp_path, "--face", tmp_path / "f.png", "--prompt", "x", "--out",
            tmp_path / "o.png", "--style", "cubism"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    names = ", ".join(style.name for style in load_styles())
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: unknown style 'cubism'; choose one of {names}"
    assert not (tmp_path / "o.png").exists()


def test_styles_command_lists_every_style():
    book = load_styles()
    listed = CliRunner().invoke(cli, ["styles"])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == [style.name for style in book]
    entries = json.loads(CliRunner().invoke(cli, ["styles", "--json"]).output)
    assert [(e["name"], e["prompt"]) for e in entries] == [(s.name, s.prompt) for s in book]
