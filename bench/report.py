"""results.json -> a Markdown table and a PNG chart."""

from __future__ import annotations

from pathlib import Path

STAGES = ("face", "text", "image_proj", "identitynet", "unet", "denoise_step", "decode", "decode_full", "end_to_end")


def _seconds(result: dict, stage: str) -> float | None:
    value = result.get("stages", {}).get(stage, {}).get("median")
    return float(value) if value is not None else None


def markdown(results: dict) -> str:
    runs = [r for r in results["runs"] if "stages" in r]
    peer = next((r for r in runs if r["config"]["backend"] == "torch"), None)
    names = [r["config"]["name"] for r in runs]
    lines = [f"| stage (seconds, median) | {' | '.join(names)} |", f"|---|{'---|' * len(names)}"]
    for stage in STAGES:
        cells = []
        for run in runs:
            value = _seconds(run, stage)
            base = _seconds(peer, stage) if peer else None
            text = "-" if value is None else f"{value:.3f}"
            if value and base and run is not peer:
                text += f" ({base / value:.2f}x)"
            cells.append(text)
        lines.append(f"| {stage} | {' | '.join(cells)} |")

    def row(label, cells):
        lines.append(f"| {label} | {' | '.join(cells)} |")

    def sampling(config):
        spacing = f" {config['timestep_spacing']}" if config.get("timestep_spacing") else ""
        cfg = f"CFG {config['guidance']:g}" if config["guidance"] > 1 else "no CFG"
        decoder = "TAESD-XL" if config.get("decoder") == "tiny" else "full VAE"
        return f"{config.get('sampler', 'euler')}{spacing}, {config['steps']} steps, {cfg}, {decoder}"

    row("sampling (end to end)", [sampling(r["config"]) for r in runs])
    row("load s (sessions, first text/face runs)", [f"{r['load_seconds']:.1f}" for r in runs])
    first = [r["stages"].get("denoise_step", {}).get("first_calls") for r in runs]
    row("first IdentityNet + UNet call s (OpenVINO compiles here)",
        ["-" if not f else f"{f['identitynet']:.1f} + {f['unet']:.1f}" for f in first])  # fmt: skip
    row("memory mode", [r.get("memory_mode", r["config"].get("memory", "-")) for r in runs])
    memory = [r["memory"] for r in runs]
    row("peak RSS GiB (anonymous)", [f"{m['peak_rss_gib']:.2f} ({m['peak_anon_gib']:.2f})" for m in memory])
    row("predicted peak GiB (memory_estimate)", [_predicted(r) for r in runs])
    row("size on disk GiB", [f"{r.get('disk_gib', 0):.2f}" for r in runs])
    gemm = results["machine"].get("gemm") or {"fp32": results["machine"]["gemm_gflops"]}
    for stage in ("identitynet", "unet", "decode"):
        cells = []
        for run in runs:
            flops, value = run.get("flops", {}).get(stage), _seconds(run, stage)
            # int8 packages run int8 MatMuls in IdentityNet and the UNet; the VAE stays fp32 in every package
            int8 = run["config"]["precision"] == "int8" and stage != "decode" and gemm.get("onnxruntime_int8")
            peak = gemm["onnxruntime_int8"] if int8 else gemm["fp32"]
            rate = flops / value / 1e9 if flops and value else None
            cells.append("-" if rate is None else f"{rate:.0f} ({rate / peak:.0%}{' of int8' if int8 else ''})")
        lines.append(f"| {stage} GFLOP/s (of GEMM peak) | {' | '.join(cells)} |")
    lines.append(
        "\nGEMM peak (n=4096, GFLOP/s; int8 in GOP/s): "
        + ", ".join(f"{name} {value:.0f}" for name, value in gemm.items())
        + ". FLOPs are counted from the fp32 ONNX graphs at the benchmark shapes (batch 2 with CFG)."
    )
    for run in runs:
        kind = run["stages"].get("end_to_end", {}).get("kind", "")
        if kind.startswith("computed"):
            lines.append(f"\n{run['config']['name']}: end_to_end is {kind}.")
    failed = [r for r in results["runs"] if "error" in r]
    for run in failed:
        lines.append(f"\n{run['config']['name']}: failed: {run['error']}")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Horizontal bars: per stage, one bar per configuration (seconds, log scale)."""
    import math

    from PIL import Image, ImageDraw

    runs = [r for r in results["runs"] if "stages" in r]
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    stages = [s for s in STAGES if any(_seconds(r, s) for r in runs)]
    values = [v for r in runs for s in stages if (v := _seconds(r, s))]
    if not values:
        return
    low, high = math.log10(min(values)) - 0.2, math.log10(max(values)) + 0.2
    bar, gap, left, width = 14, 10, 130, 520
    height = 40 + len(stages) * (len(runs) * bar + gap) + 20 * len(runs)
    image = Image.new("RGB", (left + width + 80, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text(
        (10, 8),
        f"seconds per stage (log scale), {results['request']['width']}x{results['request']['height']}",
        fill="black",
    )
    y = 30
    for stage in stages:
        draw.text((10, y + 2), stage, fill="black")
        for index, run in enumerate(runs):
            value = _seconds(run, stage)
            if value:
                length = max(2, int((math.log10(value) - low) / (high - low) * width))
                draw.rectangle([left, y, left + length, y + bar - 2], fill=colors[index % len(colors)])
                draw.text((left + length + 4, y), f"{value:.3g}", fill="black")
            y += bar
        y += gap
    for index, run in enumerate(runs):
        draw.rectangle([left, y + 4, left + 12, y + 14], fill=colors[index % len(colors)])
        draw.text((left + 18, y + 2), run["config"]["name"], fill="black")
        y += 20
    image.save(path)


def _predicted(run: dict) -> str:
    """The prediction `--memory auto` makes for the mode the run used (bench runs carry it since issue 12)."""
    prediction = run.get("memory_plan", {}).get("prediction")
    return f"{prediction['predicted_peak_gib'][prediction['chosen']]:.2f}" if prediction else "-"
