"""The `quantize` command. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from ..runtime.manifest import PROFILE_NAMES
from .policy import METHODS


def fidelity_table(quantization: dict) -> str:
    rows = [f"{'graph':15s} {'backend':12s} {'cosine':>9s} {'max abs err':>12s} {'mean abs err':>13s}"]
    for graph, backends in quantization["fidelity"]["graphs"].items():
        for backend, values in backends.items():
            rows.append(f"{graph:15s} {backend:12s} {values['cosine']:9.5f} {values['max_abs_error']:12.4g} "
                        f"{values['mean_abs_error']:13.4g}")  # fmt: skip
    rows.append(f"{'end to end':15s} {'backend':12s} {'latents PSNR':>13s} {'image PSNR':>11s}")
    for backend, values in quantization["fidelity"].get("end_to_end", {}).items():
        rows.append(f"{'':15s} {backend:12s} {values['latents_psnr_db']:10.2f} dB {values['image_psnr_db']:8.2f} dB")
    return "\n".join(rows)


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The package folder to create.")
@click.option("--method", type=click.Choice(METHODS), default="hybrid", show_default=True)
@click.option("--graphs", help="Comma-separated graph names to quantize (default: the method's policy).")
@click.option(
    "--calibration-faces", type=click.Path(path_type=Path), help="Folder of face photos (default: skimage's astronaut)."
)
@click.option(
    "--calibration-prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="One prompt per line."
)
@click.option("--samples", type=int, default=16, show_default=True, help="Calibration inputs per calibrated graph.")
@click.option(
    "--calibration-size", type=int, default=512, show_default=True, help="Pixels, for dynamic-shape packages."
)
@click.option(
    "--profile", type=click.Choice(PROFILE_NAMES),
    help="Run profile to calibrate with (default: fast if a few-step distillation is fused, else quality, 4 steps).",
)  # fmt: skip
@click.option("--face-models", type=click.Path(path_type=Path), help="Face pack folder (must match the package).")
@click.option("--check", is_flag=True, help="Print the measured fidelity (also recorded in the manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print the quantization record as JSON.")
def quantize(package, out, method, graphs, calibration_faces, calibration_prompts, samples, calibration_size,
             profile, face_models, check, as_json):  # fmt: skip
    """Make an int8 or int4 model package: calibrated on runs of the runtime pipeline, fidelity measured.

    \b
    Methods: weights (int8 weights, float compute), hybrid (int8 weights for MatMul/Gather, full int8 for
    convolutions), full (int8 weights and activations), int4 (4-bit MatMul weights in groups of 64; text
    encoders int8 weights), int4-hybrid (int4's MatMuls, hybrid's convolutions: OpenVINO's smallest). weights and
    int4 leave OpenVINO's convolutions float (compiled, it would hold their int8 weights twice, as f32). The VAE
    and the image adapter stay fp32.
    Example:
      instantid-edge quantize pkg --out pkg-int8 --method hybrid --calibration-faces photos/ --check
    """
    from .package import QuantizeRequest, quantize_package

    request = QuantizeRequest(
        package=package, out=out, method=method,
        graphs=tuple(g.strip() for g in graphs.split(",") if g.strip()) if graphs else None,
        calibration_faces=calibration_faces, calibration_prompts=calibration_prompts, samples=samples,
        face_models=face_models, calibration_size=calibration_size, profile=profile,
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars print to stdout, which holds the record
        report = quantize_package(request, log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif check:
        click.echo(fidelity_table(report))
