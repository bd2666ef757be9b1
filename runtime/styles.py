"""Named styles: a template that wraps the prompt, and a negative prompt (the data lives in styles.json).

The CLI and the kiosk read the same file; `--styles FILE` replaces it with an operator's own list in the same
format. A template marks where the prompt goes with `{prompt}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_STYLES = Path(__file__).with_name("styles.json")
PLACEHOLDER = "{prompt}"
DEFAULT_SUBJECT = "a person"  # what a style wraps when no prompt is given (a kiosk visitor types nothing)


@dataclass(frozen=True)
class Style:
    name: str
    label: str
    prompt: str  # a template holding PLACEHOLDER once
    negative_prompt: str

    def apply(self, prompt: str | None, negative_prompt: str | None = None) -> tuple[str, str]:
        """(prompt, negative prompt): the prompt put in the template; a given negative prompt is appended."""
        subject = prompt.strip() if prompt and prompt.strip() else DEFAULT_SUBJECT
        negative = f"{self.negative_prompt}, {negative_prompt}" if negative_prompt else self.negative_prompt
        return self.prompt.replace(PLACEHOLDER, subject), negative


class StyleBook:
    def __init__(self, styles: list[Style], source: Path):
        self.styles, self.source = {style.name: style for style in styles}, source

    def __iter__(self):
        return iter(self.styles.values())

    def __len__(self) -> int:
        return len(self.styles)

    def get(self, name: str) -> Style:
        """The style called `name`, or labelled so (upstream's app names its styles "Film Noir", "(No style)")."""
        if name in self.styles:
            return self.styles[name]
        by_label = {style.label.casefold(): style for style in self.styles.values()}
        if name.strip().casefold() in by_label:
            return by_label[name.strip().casefold()]
        raise ConfigError(f"unknown style {name!r}; choose one of {', '.join(self.styles)}")


def load_styles(path: str | Path | None = None) -> StyleBook:
    """The style file at `path` (default: the one shipped in the runtime), checked entry by entry."""
    path = Path(path) if path is not None else DEFAULT_STYLES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the style file {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the style file {path} is not valid JSON ({exc})") from exc
    entries = data.get("styles") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'the style file {path} needs a non-empty "styles" list')
    styles, seen = [], set()
    for index, entry in enumerate(entries):
        where = f"style {index + 1} in {path}"
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), str) and entry[key].strip() for key in ("name", "prompt")
        ):
            raise ConfigError(f'{where} needs a "name" and a "prompt" (strings)')
        name, template = entry["name"].strip(), entry["prompt"]
        if template.count(PLACEHOLDER) != 1:
            raise ConfigError(f"{where} ({name!r}): the prompt must contain {PLACEHOLDER} exactly once")
        if name in seen:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        negative = entry.get("negative_prompt", "")
        if not isinstance(negative, str):
            raise ConfigError(f"{where} ({name!r}): negative_prompt must be a string")
        styles.append(Style(name, str(entry.get("label") or name), template, negative))
    return StyleBook(styles, path)
