"""The `instantid-edge` command: a thin, lazy click group over the library.

Subcommands are imported only when run, so `--help` is instant and runtime commands never import torch.
Library errors (instantid_edge.runtime.errors.InstantIDError) become a one-line message and exit code 1.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import click

# name -> ("module:attribute", one-line help shown by `instantid-edge --help` without importing anything)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "bench": (
        "instantid_edge.bench.cli:bench",
        "Time every stage of every backend and precision beside PyTorch; results.json, a table and a chart.",
    ),
    "bench-memory": (
        "instantid_edge.bench.cli:bench_memory",
        "Measure where each graph's memory goes (weights mapped/copied, load peak, activations) per size and batch.",
    ),
    "bench-conv": (
        "instantid_edge.bench.cli:bench_conv",
        "Time the UNet's 3x3 convolutions in fp32 and int8 on both backends: are int8 convolutions faster here?",
    ),
    "bench-watermark": (
        "instantid_edge.bench.watermark:bench_watermark",
        "Measure the watermark: detection under JPEG/resize/crop, false positives, PSNR, embed/detect time.",
    ),
    "demo": (
        "instantid_edge.export.cli:demo",
        "Run the main job once on embedded defaults: a tiny random-weight stand-in, exported, then generated.",
    ),
    "standin": (
        "instantid_edge.export.cli:standin",
        "Write random-weight stand-in checkpoints in the real InstantID layout (needs torch).",
    ),
    "export": (
        "instantid_edge.export.cli:export",
        "Export a checkpoint to a model package (ONNX and/or OpenVINO IR) with measured parity (needs torch).",
    ),
    "generate": (
        "instantid_edge.runtime.cli:generate",
        "Generate a portrait from a face photo and a prompt with a model package (no PyTorch).",
    ),
    "inspect": (
        "instantid_edge.runtime.cli:inspect",
        "Print a model package's manifest and verify its files.",
    ),
    "mark": (
        "instantid_edge.runtime.provenance.cli:mark",
        "Add the invisible watermark and the AI label to any image (PNG, JPEG or WebP out).",
    ),
    "provenance": (
        "instantid_edge.runtime.provenance.cli:provenance",
        "Set up C2PA signing: `provenance init DIR` makes a local CA and a signing certificate.",
    ),
    "quantize": (
        "instantid_edge.quantize.cli:quantize",
        "Make an int8 model package, calibrated on pipeline runs, with its fidelity measured.",
    ),
    "reference": (
        "instantid_edge.export.cli:reference",
        "Generate a portrait with the PyTorch reference pipeline (needs torch).",
    ),
    "serve": (
        "instantid_edge.serve.cli:serve",
        "Serve the kiosk page and an HTTP API (model loaded once, jobs queued, nothing kept; needs the serve extra).",
    ),
    "styles": (
        "instantid_edge.runtime.cli:styles",
        "List the named style templates `generate --style NAME` applies.",
    ),
    "verify": (
        "instantid_edge.runtime.provenance.cli:verify",
        "Report each image's watermark, XMP label and C2PA state (exit 0 all marked, 2 any unmarked, 1 errors).",
    ),
}
# commands whose dependencies come with another extra than the tools' `export`
EXTRA_OF = {"serve": "serve"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS:
            return None
        module_name, attribute = LAZY_COMMANDS[name][0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "a dependency"
            raise click.ClickException(
                f"`{name}` needs {missing}, which is not installed. "
                f"Install it with: pip install 'instantid-edge[{EXTRA_OF.get(name, 'export')}]'"
            ) from exc
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, LAZY_COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from instantid_edge.runtime.errors import InstantIDError

        try:
            return super().invoke(ctx)
        except InstantIDError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(exc)) from exc


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from instantid_edge.runtime.errors import InstantIDWarning

    if issubclass(category, InstantIDWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


@click.group(cls=LazyGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="instantid-edge")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """InstantID on CPUs: stand-ins, export, a torch-free runtime, int8 and benchmarks."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    warnings.showwarning = _show_warning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
