"""A human summary of a model package, and the check that its files are intact."""

from __future__ import annotations

from .manifest import Manifest
from .profiles import describe as describe_profile
from .profiles import package_profiles


def _shape(spec) -> str:
    return f"{spec.name}[{','.join(str(d) for d in spec.shape)}]"


def summary(manifest: Manifest) -> str:
    data, standin, static = manifest.data, manifest.standin, manifest.static_size
    lines = [
        f"package {manifest.root} (schema {data['schema_version']}, made {data.get('created', '?')} by "
        f"instantid-edge {data['producer'].get('instantid_edge', '?')})",
        "weights: "
        + (f"RANDOM stand-in ({standin.get('preset')})" if standin else "from " + data["source"]["checkpoint"]),
        "shapes: " + (f"static {static[0]}x{static[1]}" if static else "dynamic"),
    ]
    if manifest.loras:
        lines.append("loras fused: " + ", ".join(f"{x['file']} x{x['scale']}" for x in manifest.loras))
    for name, profile in package_profiles(manifest).items():
        lines.append(f"profile {name}: {describe_profile(profile)}")
        if profile.source:
            lines.append(f"      from {profile.source}")
    for graph in manifest.graphs.values():
        size = {fmt: sum(f["bytes"] for f in files) / 2**20 for fmt, files in graph.files.items()}
        errors = {
            k: v["max_abs_error"] for k, v in graph.validation.items() if isinstance(v, dict) and "max_abs_error" in v
        }
        lines.append(
            f"  {graph.name:15s} {graph.precision:5s} "
            + " ".join(f"{fmt} {mb:.1f} MiB" for fmt, mb in size.items())
            + ("  error vs PyTorch: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) if errors else "")
        )
        lines.append("      in:  " + " ".join(_shape(s) for s in graph.inputs))
        lines.append("      out: " + " ".join(_shape(s) for s in graph.outputs))
    return "\n".join(lines)
