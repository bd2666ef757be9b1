"""CLI commands of the tools: `standin`, `reference`, `export` and `demo` (each imports torch only when run).

Imported lazily by instantid_edge.cli.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..runtime.backends import BACKENDS, FORMATS
from ..runtime.cli_options import explicit_options, generation_options, sampler_options, settings_from_options
from .architecture import PRESETS

PRESET_CHOICE = click.Choice(PRESETS)


@click.command()
@click.option("--preset", type=PRESET_CHOICE, required=True, help="full = the exact SDXL + InstantID sizes.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder to create (must not exist or be empty).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--embedding-dim",
    type=int,
    default=512,
    show_default=True,
    help="Face-embedding width the adapter takes (128 pairs with the 128-d test face pack).",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="CLIP BPE files (a folder with vocab.json + merges.txt, or an SDXL folder with tokenizer/ "
    "and tokenizer_2/). Default: ../shared/assets/configs/sdxl-base when present.",
)
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), help="Weight storage (default: fp16 for full).")
@click.option("--single-file", is_flag=True, help="Write the SDXL base as one original-layout sdxl.safetensors.")
@click.option(
    "--fast-path",
    is_flag=True,
    help="Also write OUT/fast-path/: few-step LoRAs (Lightning, Hyper-SD, LCM, DMD2) and TAESD-XL, as released.",
)
@click.option(
    "--controlnet", "controlnets", multiple=True, metavar="NAME",
    help="Also write OUT/controlnets/NAME/: an extra SDXL ControlNet in diffusers' layout (e.g. canny, depth).",
)  # fmt: skip
@click.option("--describe", is_flag=True, help="Print parameter counts as JSON (meta device, no weights).")
def standin(preset, out, seed, embedding_dim, tokenizer, dtype, single_file, fast_path, controlnets, describe):
    """Write a random-weight stand-in of InstantID in the real on-disk layout.

    \b
    Example:
      instantid-edge standin --preset tiny --embedding-dim 128 --out /tmp/standin-tiny --fast-path
      instantid-edge standin --preset full --describe
    """
    from .standin import build_standin
    from .standin import describe as describe_preset

    if describe:
        click.echo(json.dumps(describe_preset(preset, embedding_dim), indent=2))
        return
    if out is None:
        raise click.UsageError("--out is required (unless --describe)")
    import torch

    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32, None: None}[dtype]
    report = build_standin(out, preset, seed, embedding_dim, tokenizer, torch_dtype, single_file, fast_path,
                           controlnets)  # fmt: skip
    click.echo(json.dumps(report, indent=2))
    click.echo(f"Wrote a RANDOM-WEIGHT stand-in ({preset}) to {out}; it is not a real model.", err=True)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="SDXL base elsewhere: a diffusers folder or a single-file .safetensors.",
)
@generation_options
@sampler_options
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]", help="Fuse a LoRA (repeatable), as export.")
@click.option(
    "--tiny-decoder",
    type=click.Path(exists=True, path_type=Path),
    help="Decode with TAESD-XL (taesdxl_decoder.pth, its .safetensors or an AutoencoderTiny folder).",
)
@click.option("--threads", type=int, help="torch intra-op threads (default: torch's choice).")
@click.option(
    "--controlnet", "controlnets", multiple=True, metavar="NAME=DIR",
    help="An extra SDXL ControlNet in diffusers' layout, for --control NAME (repeatable), as export.",
)  # fmt: skip
def reference(checkpoint, base, loras, tiny_decoder, threads, controlnets, **options):
    """Generate a portrait with the PyTorch reference pipeline (the oracle for the runtime).

    \b
    Example:
      instantid-edge reference /tmp/standin-tiny --face photo.jpg --prompt "a portrait, oil painting" \\
          --out portrait.png --steps 30 --seed 42
      instantid-edge reference checkpoints --face me.jpg --prompt "a portrait" --out ref.png \\
          --lora sdxl_lightning_4step_lora.safetensors --sampler euler --timestep-spacing trailing --steps 4 \\
          --guidance 0 --tiny-decoder taesdxl_decoder.pth
    """
    import torch

    from ..runtime.face import FaceAnalyzer
    from ..runtime.files import save_npy
    from ..runtime.images import load_rgb
    from ..runtime.provenance import save_png
    from .checkpoint import locate_checkpoint
    from .controlnet_export import ControlNetSpec
    from .lora import LoraSpec
    from .reference import generate
    from .reference_models import load_reference_models

    options["decoder"] = "tiny" if tiny_decoder else "full"
    settings, inputs = settings_from_options(options, explicit_options(click.get_current_context()))
    lora_specs = [LoraSpec.parse(text) for text in loras]
    face_rgb = load_rgb(inputs.face)  # cheap checks first: a bad photo or path fails before models load
    noise = inputs.load_latents()
    init_rgb = inputs.load_init_image()
    control_rgb = inputs.load_control_images()
    paths = locate_checkpoint(checkpoint, base)
    analyzer = FaceAnalyzer(inputs.face_models)
    if threads:
        torch.set_num_threads(threads)
    extra = {spec.name: spec.folder for spec in map(ControlNetSpec.parse, controlnets)}
    models = load_reference_models(paths, loras=lora_specs, tiny_decoder=tiny_decoder, controlnets=extra)
    if models.standin:
        click.echo(f"Weights: {models.standin['warning']} (preset {models.standin['preset']})", err=True)
    with click.progressbar(length=settings.steps, label="denoising", file=sys.stderr) as bar:
        result = generate(models, analyzer, face_rgb, settings, noise, progress=lambda i, n: bar.update(1),
                          init_rgb=init_rgb, control_rgb=control_rgb)  # fmt: skip
    face = result.conditioning.face
    click.echo(
        f"Face: {face.num_faces} found; using the largest, box {[round(float(v)) for v in face.bbox]} "
        f"(score {face.det_score:.2f})",
        err=True,
    )
    record = {
        "generator": "reference (PyTorch)",
        "settings": {
            **settings.to_dict(),
            "width": result.conditioning.width,
            "height": result.conditioning.height,
        },
        "checkpoint": str(checkpoint),
        "loras": [spec.record() for spec in lora_specs],
        "standin": bool(models.standin),
        "faces_found": face.num_faces,
    }
    if inputs.save_latents:
        save_npy(inputs.save_latents, result.latents)
    save_png(inputs.out, result.image, record)
    click.echo(json.dumps({"out": str(inputs.out), "timings_s": {k: round(v, 3) for k, v in result.timings.items()}}))


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("instantid-demo.png"), show_default=True)
@click.option("--face-models", type=click.Path(path_type=Path), help="Face pack folder (default: see above).")
@click.option(
    "--work", type=click.Path(path_type=Path), help="Where the stand-in and its package are kept (default: the cache)."
)
@click.option("--backend", type=click.Choice(BACKENDS), default="openvino", show_default=True)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--size", type=int, default=512, show_default=True, help="Output width and height.")
def demo(out, face_models, work, backend, steps, size):
    """Run the main job once on embedded defaults, and say exactly what they are.

    \b
    Builds a tiny random-weight stand-in (real weights cannot ship with the code), exports it to a model
    package (both kept in ~/.cache/instantid-edge), and generates with the torch-free runtime.
    Face: scikit-image's astronaut photo. Face pack: the shared 128-d test pack when the shared assets
    are there ($INSTANTID_EDGE_ASSETS, or ../shared/assets beside the source checkout), else antelopev2
    from ~/.insightface (insightface downloads it when the machine is online).
    Example:
      instantid-edge demo --out demo.png --steps 4 --size 256
    """
    from ..runtime.pipeline import InstantIDPipeline
    from ..runtime.provenance import save_png
    from ..runtime.settings import GenerationSettings
    from ..runtime.timing import stage_seconds
    from .demo import DEMO_PROMPT, demo_inputs

    if out.suffix.lower() != ".png":
        raise click.UsageError(f"--out must end in .png: {out}")
    inputs = demo_inputs(face_models, work, log=lambda line: click.echo(line, err=True))
    for what, text in inputs["described"].items():
        click.echo(f"{what:>10}: {text}", err=True)
    settings = GenerationSettings(prompt=DEMO_PROMPT, steps=steps, height=size, width=size).validate()
    pipe = InstantIDPipeline.load(inputs["package"], backend=backend, face_models=inputs["face_models"])
    result = pipe(inputs["face_rgb"], settings)
    record = {"generator": f"demo, runtime ({backend})", "settings": result.settings.to_dict(), "standin": True,
              "inputs": inputs["described"]}  # fmt: skip
    save_png(out, result.images[0], record, watermarked=result.watermarked)
    seconds = sum(stage_seconds(result.timings).values())
    click.echo(f"Wrote {out} ({size}x{size}, {steps} steps, {backend}) in {seconds:.1f} s of model time.", err=True)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Package folder to create.")
@click.option("--format", "fmt", type=click.Choice([*FORMATS, "both"]), default="both", show_default=True)
@click.option("--height", type=int, help="Export static shapes for this output height (with --width).")
@click.option("--width", type=int, help="Export static shapes for this output width (with --height).")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]", help="Fuse a LoRA (repeatable).")
@click.option(
    "--profile",
    metavar="NAME",
    help="The few-step distillation the --lora holds (lightning-4step, hyper-1step, lcm-4step, dmd2-4step, ...); "
    "default: identified by sha256 or the released file name.",
)
@click.option(
    "--tiny-decoder",
    type=click.Path(exists=True, path_type=Path),
    help="Also export TAESD-XL as graph vae_decoder_tiny: taesdxl_decoder.pth, its .safetensors, or the "
    "madebyollin/taesdxl (AutoencoderTiny) folder.",
)
@click.option("--base", type=click.Path(path_type=Path), help="SDXL base elsewhere (diffusers folder or .safetensors).")
@click.option(
    "--controlnet", "controlnets", multiple=True, metavar="NAME=DIR",
    help="Also export an extra SDXL ControlNet in diffusers' layout as graph controlnet_NAME (repeatable); names "
    "starting with canny get edges computed at run time, others take a prepared image.",
)  # fmt: skip
@click.option(
    "--attention-slice", type=click.IntRange(min=0), default=1, show_default=True, metavar="HEADS",
    help="The UNet's and ControlNets' self-attention computes this many heads at a time (0: all at once); fewer "
    "hold less memory at large sizes (README, memory modes).",
)  # fmt: skip
def export(checkpoint, out, fmt, height, width, loras, profile, tiny_decoder, base, controlnets, attention_slice):
    """Export UNet, IdentityNet, the image adapter, both text encoders and the VAE to a model package.

    \b
    Example:
      instantid-edge export /tmp/standin-tiny --out /tmp/pkg-tiny
      instantid-edge export checkpoints --out pkg-768 --format openvino --height 768 --width 768 \\
          --lora sdxl_lightning_4step_lora.safetensors --tiny-decoder taesdxl_decoder.pth
    """
    from .controlnet_export import ControlNetSpec
    from .lora import LoraSpec
    from .package import ExportRequest, export_package

    request = ExportRequest(
        checkpoint=checkpoint,
        out=out,
        formats=FORMATS if fmt == "both" else (fmt,),
        height=height,
        width=width,
        loras=tuple(LoraSpec.parse(text) for text in loras),
        base=base,
        profile=profile,
        tiny_decoder=tiny_decoder,
        controlnets=tuple(ControlNetSpec.parse(text) for text in controlnets),
        attention_slice=attention_slice or None,
    )
    export_package(request, log=lambda line: click.echo(line, err=True))
