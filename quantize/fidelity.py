"""What int8 costs: per graph on held-out inputs, and end to end against the fp32 package."""

from __future__ import annotations

import numpy as np


def compare_outputs(reference: dict[str, np.ndarray], produced: dict[str, np.ndarray]) -> dict:
    """Cosine similarity (flattened), max and mean absolute error, over all outputs together."""
    a = np.concatenate([reference[k].ravel() for k in reference]).astype(np.float64)
    b = np.concatenate([produced[k].ravel() for k in reference]).astype(np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return {"cosine": round(cosine, 6), "max_abs_error": float(np.abs(a - b).max()),
            "mean_abs_error": float(np.abs(a - b).mean()), "reference_max_abs": float(np.abs(a).max())}  # fmt: skip


def run_all(session, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    """A session's outputs for every feed; the caller drops the session after, so that the fp32 and the int8
    graph are never in memory together (the full-size UNet pair did not fit 24 GiB beside the other jobs)."""
    return [session.run(f) for f in feeds]


def graph_fidelity(reference: list[dict], produced: list[dict]) -> dict:
    """Worst cosine and errors of int8 outputs against the fp32 ones, over held-out feeds."""
    results = [compare_outputs(a, b) for a, b in zip(reference, produced, strict=True)]
    return {
        "samples": len(results),
        "cosine": min(r["cosine"] for r in results),
        "max_abs_error": max(r["max_abs_error"] for r in results),
        "mean_abs_error": float(np.mean([r["mean_abs_error"] for r in results])),
    }


def psnr(reference: np.ndarray, produced: np.ndarray, peak: float) -> float:
    mse = float(np.mean((reference.astype(np.float64) - produced.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(peak**2 / mse), 2)


def end_to_end(fp32_result, int8_result) -> dict:
    latents = fp32_result.latents
    return {
        "latents_psnr_db": psnr(latents, int8_result.latents, float(latents.max() - latents.min())),
        "image_psnr_db": psnr(fp32_result.images[0], int8_result.images[0], 255.0),
        "image_mean_abs_error": float(np.abs(fp32_result.images[0].astype(int) - int8_result.images[0]).mean()),
    }
