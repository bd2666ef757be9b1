"""The `bench` command. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

from pathlib import Path

import click

from ..export.architecture import PRESETS
from ..export.distillations import PROFILES as DISTILLATIONS
from ..quantize.policy import METHODS
from ..runtime.backends import BACKENDS
from ..runtime.cli_options import memory_option
from ..runtime.manifest import PROFILE_NAMES
from .run import PEER


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@click.command()
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for results.json/.md and chart.png."
)
@click.option("--preset", type=click.Choice(PRESETS), help="Build (once, cached) a stand-in and packages.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Checkpoint for the PyTorch peer.")
@click.option("--package", "packages", multiple=True, type=click.Path(path_type=Path), help="Model package(s) to time.")
@click.option("--height", type=int, default=768, show_default=True)
@click.option("--width", type=int, default=768, show_default=True)
@click.option("--steps", type=int, help="Denoising steps of the end-to-end run [default: 4, or the profile's].")
@click.option("--guidance", type=float, default=5.0, show_default=True, help="> 1 means CFG (batch 2).")
@click.option("--backends", default=",".join((PEER, *BACKENDS)), show_default=True)
@click.option("--precisions", default="fp32,int8", show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True, help="Steady-state runs per stage (after a warm-up).")
@click.option("--threads", type=int, help="Threads for every backend (default: each backend's choice).")
@click.option("--face-models", type=click.Path(path_type=Path), help="Face pack folder.")
@memory_option("Memory mode of the runtime configurations (see generate --help).")
@click.option("--int8-method", type=click.Choice(METHODS), default="weights", show_default=True)
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    help="Run the packages as their manifest's profile says (its guidance, sampler, decoder and, unless --steps "
    "is given, steps), beside PyTorch at upstream defaults (computed from its stages) and on the same settings.",
)
@click.option("--lora", "loras", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="The LoRA the packages fused, for PyTorch on the profile's settings (with --profile).")  # fmt: skip
@click.option("--tiny-decoder", type=click.Path(exists=True, path_type=Path), help="The TAESD-XL file, likewise.")
@click.option("--distillation", type=click.Choice(tuple(DISTILLATIONS)), default="lightning-4step", show_default=True,
              help="With --preset and --profile fast: the stand-in distillation to fuse.")  # fmt: skip
def bench(out, preset, checkpoint, packages, height, width, steps, guidance, backends, precisions, repeat, threads,
          face_models, memory, int8_method, profile, loras, tiny_decoder, distillation):  # fmt: skip
    """Time every stage of every backend and precision, beside the PyTorch reference, on this machine.

    \b
    Example (the real architecture, random weights, built once into ~/.cache/instantid-edge/bench):
      instantid-edge bench --preset full --height 768 --width 768 --threads 2 --out bench-768
      instantid-edge bench --preset full --profile fast --distillation lightning-2step --precisions int8 \\
          --threads 2 --out bench-768-fast-2step
    """
    from .run import BenchRequest, run_bench

    request = BenchRequest(out=out, preset=preset, checkpoint=checkpoint, packages=tuple(packages), width=width,
                           height=height, steps=steps, guidance=guidance, backends=_list(backends),
                           precisions=_list(precisions), repeat=repeat, threads=threads, face_models=face_models,
                           memory=memory, int8_method=int8_method, profile=profile, loras=tuple(loras),
                           tiny_decoder=tiny_decoder, distillation=distillation)  # fmt: skip
    results = run_bench(request, log=lambda line: click.echo(line, err=True))
    click.echo((out / "results.md").read_text())
    failed = [r for r in results["runs"] if "error" in r]
    if failed:
        raise click.ClickException(f"{len(failed)} configuration(s) failed; see {out / 'results.md'}")


def _sizes(text: str) -> list[tuple[int, int]]:
    from ..runtime.errors import ConfigError
    from ..runtime.settings import check_size

    sizes = []
    for item in _list(text):
        height, _, width = item.partition("x")
        try:
            size = (int(height), int(width or height))
        except ValueError as exc:
            raise ConfigError(f"--sizes takes HEIGHT[xWIDTH] items separated by commas, got {item!r}") from exc
        check_size(*size, neither="")
        sizes.append(size)
    return sizes


@click.command("bench-memory")
@click.option("--package", "packages", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Model package(s) to measure.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for breakdown.json/.md.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--graphs", default="text_encoder,text_encoder_2,image_proj,identitynet,unet,vae_decoder",
              show_default=True)  # fmt: skip
@click.option("--sizes", default="768,1024", show_default=True, help="Output sizes, HEIGHT[xWIDTH], comma-separated.")
@click.option("--batches", default="1,2", show_default=True, help="IdentityNet/UNet batches (2: CFG in one call).")
@click.option("--lever", "levers", multiple=True, help="A backend memory switch, NAME=0|1 (repeatable).")
@click.option("--threads", type=int, help="Inference threads.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="OpenVINO compiled-model cache (default: none).")
def bench_memory(packages, out, backends, graphs, sizes, batches, levers, threads, cache_dir):
    """Measure where each graph's memory goes: weights mapped and copied, load/compile peak, activations.

    \b
    Every graph of every package runs alone in its own process, at each size and batch.
    Example:
      instantid-edge bench-memory --package pkg-int8 --sizes 768,1024 --threads 2 --out memory-int8
    """
    import json

    from ..runtime.session import Levers
    from .memory_breakdown import markdown_table, run_breakdown

    results = run_breakdown(list(packages), list(_list(backends)), list(_list(graphs)), _sizes(sizes),
                            [int(b) for b in _list(batches)], Levers.parse(list(levers)), threads,
                            log=lambda line: click.echo(line, err=True), cache_dir=cache_dir)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "breakdown.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results["rows"])
    (out / "breakdown.md").write_text(table)
    click.echo(table)


@click.command("bench-conv")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for conv.json/.md.")
@click.option("--preset", type=click.Choice(PRESETS), default="full", show_default=True,
              help="The architecture whose UNet convolutions are timed.")  # fmt: skip
@click.option("--height", type=int, default=768, show_default=True)
@click.option("--width", type=int, default=768, show_default=True)
@click.option("--repeat", type=int, default=5, show_default=True, help="Timed calls per form (after a warm-up).")
@click.option("--threads", type=int, help="Inference threads.")
def bench_conv(out, preset, height, width, repeat, threads):
    """Time the UNet's 3x3 convolutions in fp32 and int8 on both backends: are int8 convolutions faster here?

    \b
    Example:
      instantid-edge bench-conv --height 768 --width 768 --threads 2 --out conv-768
    """
    import json

    from ..runtime.errors import ConfigError
    from .conv import conv_rates, markdown_table

    if min(height, width, repeat) < 1 or height % 32 or width % 32:
        raise ConfigError(f"--height/--width must be positive multiples of 32 and --repeat >= 1, got "
                          f"{height}x{width}, {repeat}")  # fmt: skip
    result = conv_rates(preset, height, width, threads, repeat)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conv.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "conv.md").write_text(table)
    click.echo(table)
