"""Style templates: the shipped file, applying a style, and every malformed file refused with a clear error."""

from __future__ import annotations

import json

import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.styles import DEFAULT_SUBJECT, load_styles


def test_shipped_styles_load_and_wrap_the_prompt():
    book = load_styles()
    assert len(book) >= 4
    watercolor = book.get("watercolor")
    prompt, negative = watercolor.apply("an astronaut", "blurry")
    before, after = watercolor.prompt.split("{prompt}")
    assert prompt == before + "an astronaut" + after
    assert negative == watercolor.negative_prompt + ", blurry"
    assert watercolor.apply(None)[0] == before + DEFAULT_SUBJECT + after
    assert watercolor.apply("   ")[1] == watercolor.negative_prompt


def test_the_styles_carry_the_names_of_instantids_app_and_are_found_by_either_name():
    """gradio_demo/style_template.py in instantX-research/InstantID names nine styles; we ship the same nine."""
    book = load_styles()
    upstream = ["(No style)", "Watercolor", "Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow", "Line art"]
    assert [style.label for style in book] == upstream
    assert book.get("Film Noir") is book.get("film-noir") is book.get("film noir")
    assert book.get("(No style)").apply("an astronaut") == ("an astronaut", "")


def test_unknown_style_lists_the_names():
    book = load_styles()
    with pytest.raises(ConfigError, match="unknown style 'cubism'; choose one of none, watercolor"):
        book.get("cubism")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"styles": []}), 'non-empty "styles" list'),
        (json.dumps({"styles": [{"name": "a"}]}), 'needs a "name" and a "prompt"'),
        (json.dumps({"styles": [{"name": "a", "prompt": "no placeholder"}]}), "exactly once"),
        (
            json.dumps({"styles": [{"name": "a", "prompt": "{prompt}"}, {"name": "a", "prompt": "x {prompt}"}]}),
            "used twice",
        ),  # fmt: skip
        (json.dumps({"styles": [{"name": "a", "prompt": "{prompt}", "negative_prompt": 3}]}), "must be a string"),
    ],
)
def test_malformed_style_files_are_refused(tmp_path, content, message):
    path = tmp_path / "styles.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_styles(path)
    with pytest.raises(ConfigError, match="cannot read the style file"):
        load_styles(tmp_path / "missing.json")
