"""CLI commands of the torch-free runtime. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .backends import BACKENDS
from .cli_options import (
    MODE_HELP,
    explicit_options,
    generation_options,
    memory_option,
    sampler_options,
    settings_from_options,
)
from .errors import PackageError
from .manifest import DECODER_GRAPHS, PROFILE_NAMES
from .provenance.cli import sign_option


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(package, as_json):
    """Print a model package's manifest and verify every file's size and sha256.

    \b
    Example:
      instantid-edge inspect /tmp/pkg-tiny
    """
    from .inspect import summary
    from .manifest import read_manifest, verify_files

    manifest = read_manifest(package)
    click.echo(json.dumps(manifest.data, indent=2) if as_json else summary(manifest))
    problems = verify_files(manifest)
    if problems:
        raise PackageError(f"package {package} is damaged: " + "; ".join(problems))
    if not as_json:
        click.echo(f"all {len(manifest.data['files'])} files present and intact", err=True)


def output_paths(out: Path, count: int) -> list[Path]:
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def timing_table(timings: dict, wall: float) -> str:
    calls = timings.get("calls", {})
    rows = [f"{'stage':12s} {'seconds':>9s} {'calls':>6s}"]
    for name in ("face", "image_proj", "text", "identitynet", "unet", "denoise", "decode", "watermark"):
        if name in timings:
            rows.append(f"{name:12s} {timings[name]:9.3f} {calls.get(name, ''):>6}")
    rows.append(f"{'total':12s} {wall:9.3f}")
    if "run" in timings:
        run = timings["run"]
        rows.append(
            f"batch {run['batch']}{' (CFG)' if run['batch'] == 2 else ''}, {run['steps']} steps, {run['decoder']}"
        )
    return "\n".join(rows)


@click.command()
@click.option("--package", "package_dir", type=click.Path(path_type=Path), required=True, help="Model package folder.")
@generation_options
@click.option("--pose", type=click.Path(path_type=Path), help="Photo whose face keypoints set the pose (and size).")
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    help="Run as the package was exported for: fast (its few-step distillation, no CFG, tiny decoder) or quality. "
    "Options given explicitly override it.",
)
@sampler_options
@click.option(
    "--decoder",
    type=click.Choice(tuple(DECODER_GRAPHS)),
    default="full",
    help="The full VAE or TAESD-XL (tiny; packages exported with --tiny-decoder). Default: the profile's, else full.",
)
@click.option("--num-images", type=int, default=1, show_default=True, help="Image i uses seed + i.")
@click.option("--control-start", type=float, default=0.0, show_default=True, help="IdentityNet starts (fraction).")
@click.option("--control-end", type=float, default=1.0, show_default=True, help="IdentityNet ends (fraction).")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option("--threads", type=int, help="Inference threads (default: the backend's choice).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="OpenVINO compiled-model cache folder.")
@click.option(
    "--no-cache", is_flag=True, help="Do not cache compiled OpenVINO models (they take as much disk as the weights)."
)
@click.option(
    "--precision",
    type=click.Choice(["f32", "bf16"]),
    default="f32",
    show_default=True,
    help="OpenVINO inference precision (bf16 only where the CPU has it).",
)
@memory_option("auto: the fastest mode predicted to fit (see README); " + MODE_HELP)
@click.option("--memory-budget", type=float, help="GiB auto may plan for (default: physical memory less 15%).")
@sign_option
@click.option("--json", "as_json", is_flag=True, help="Print the result and timings as JSON.")
def generate(package_dir, pose, profile, backend, threads, cache_dir, no_cache, precision, memory, memory_budget,
             sign_dir, as_json, **options):  # fmt: skip
    """Generate an identity-preserving portrait from a face photo and a prompt, without PyTorch.

    \b
    Example:
      instantid-edge generate --package pkg --face me.jpg --prompt "a watercolor portrait" --out me.png \\
          --backend openvino --threads 2 --steps 30 --seed 7
      instantid-edge generate --package pkg-lightning --face me.jpg --prompt "a portrait" --out me.png --profile fast
    """
    from .files import save_npy
    from .images import load_rgb
    from .manifest import read_manifest
    from .memory import process_memory
    from .memory_estimate import parse_budget
    from .pipeline import InstantIDPipeline
    from .profiles import apply_profile
    from .provenance import write_output
    from .provenance.credentials import configured_signer

    start = time.perf_counter()
    explicit = explicit_options(click.get_current_context())
    adjust = None
    if profile:
        manifest = read_manifest(package_dir)

        def adjust(settings):
            return apply_profile(settings, manifest, profile, explicit)

    settings, inputs = settings_from_options(options, explicit, adjust)
    signer = configured_signer(sign_dir)  # a bad signing set-up fails before models load
    face_rgb = load_rgb(inputs.face)  # cheap checks first: bad photos fail before models load
    pose_rgb = load_rgb(pose) if pose else None
    noise = inputs.load_latents()
    init_rgb = inputs.load_init_image()
    control_rgb = inputs.load_control_images()
    budget = parse_budget(memory_budget)
    pipe = InstantIDPipeline.load(package_dir, backend, threads, inputs.face_models, cache_dir, precision, memory,
                                  cache=not no_cache, memory_budget=budget)  # fmt: skip
    standin = pipe.package.manifest.standin
    if standin:
        click.echo(f"Weights: RANDOM stand-in ({standin['preset']}): not a real model", err=True)
    load_seconds = time.perf_counter() - start
    from tqdm import tqdm

    with tqdm(total=settings.steps * settings.num_images, desc="denoising", file=sys.stderr, disable=as_json) as bar:

        def progress(done, total):
            bar.total = total  # img2img runs only its share of the steps
            bar.update(done - bar.n)

        result = pipe(
            face_rgb, settings, pose_rgb, noise, progress=progress, init_rgb=init_rgb, control_rgb=control_rgb
        )
    face = result.conditioning.face
    chosen = f"{face.num_faces} face(s) found; using the largest, box {[round(float(v)) for v in face.bbox]}"
    record = {
        "generator": f"runtime ({backend})",
        "settings": result.settings.to_dict(),
        "profile": profile,
        "package": str(package_dir),
        "standin": bool(standin),
        "faces_found": face.num_faces,
        "pose_photo": bool(pose),
        "init_image": bool(init_rgb is not None),
    }
    paths = output_paths(inputs.out, settings.num_images)
    if inputs.save_latents:
        save_npy(inputs.save_latents, result.latents)
    for index, (path, image) in enumerate(zip(paths, result.images, strict=True)):
        record_i = {**record, "image_index": index, "seed": settings.seed + index}
        write_output(path, image, record_i, watermarked=result.watermarked, signer=signer)
    wall = time.perf_counter() - start
    memory_record = {**pipe.memory.to_dict(), "measured_peak_gib": round(process_memory()["peak"] / 2**30, 2)}
    summary = {"outputs": [str(p) for p in paths], "face": chosen, "profile": profile,
               "settings": result.settings.to_dict(), "load_seconds": round(load_seconds, 3),
               "timings": result.timings, "total_seconds": round(wall, 3), "memory": memory_record}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(chosen, err=True)
        click.echo(f"{'load':12s} {load_seconds:9.3f}", err=True)
        click.echo(f"memory mode {pipe.memory.mode}, peak RSS {memory_record['measured_peak_gib']:.2f} GiB", err=True)
        click.echo(timing_table(result.timings, wall), err=True)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the styles as JSON.")
def styles(as_json):
    """List the named style templates: each wraps the prompt ({prompt} marks where) and adds a negative prompt.

    \b
    Example:
      instantid-edge styles
      instantid-edge generate --package pkg --face me.jpg --prompt "an astronaut" --style watercolor --out me.png
    """
    from .styles import load_styles

    book = load_styles()
    if as_json:
        entries = [{"name": s.name, "label": s.label, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                   for s in book]  # fmt: skip
        click.echo(json.dumps(entries, indent=2))
        return
    for style in book:
        click.echo(f"{style.name:12s} {style.label}: {style.prompt}")
