"""Shared fixtures: the real small assets in ../shared/assets, and a tiny stand-in built once per session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from instantid_edge.tools.assets import ENV_VAR, shared_assets

HAS_TORCH = importlib.util.find_spec("torch") is not None
# The assets beside this checkout, found from here rather than from the installed code (which, installed
# without -e, lives elsewhere); exported so that the library's own defaults (the stand-in's tokenizer, the
# demo's face pack) find the same folder.
ASSETS = shared_assets(project_root=Path(__file__).resolve().parents[1])
if ASSETS is not None:
    os.environ.setdefault(ENV_VAR, str(ASSETS))
PACKAGE_ENV = "INSTANTID_EDGE_TEST_PACKAGE"  # a tiny package exported elsewhere (CI's torch-free environment)


def pytest_collection_modifyitems(config, items):
    skip_torch = pytest.mark.skip(reason="needs torch: install the tools with pip install '.[export,dev]'")
    for item in items:
        if "torch" in item.keywords and not HAS_TORCH:
            item.add_marker(skip_torch)


@pytest.fixture(scope="session")
def assets() -> Path:
    if ASSETS is None:
        pytest.skip(
            "real test assets not found: put them at ../shared/assets beside the project, or set INSTANTID_EDGE_ASSETS"
        )
    return ASSETS


@pytest.fixture(scope="session")
def face_pack(assets) -> Path:
    return assets / "insightface" / "models" / "test_pack"


@pytest.fixture(scope="session")
def astronaut(assets) -> Path:
    return assets / "faces" / "astronaut.png"


@pytest.fixture(scope="session")
def analyzer(face_pack):
    from instantid_edge.runtime.face import FaceAnalyzer

    return FaceAnalyzer(face_pack)


@pytest.fixture(scope="session")
def tiny_standin(tmp_path_factory, assets) -> Path:
    """A tiny random-weight InstantID set (128-d face embeddings, to pair with the test face pack), with the
    fast-path stand-ins (few-step LoRAs, TAESD-XL) in fast-path/."""
    if not HAS_TORCH:
        pytest.skip("building a stand-in needs torch")
    from instantid_edge.export.standin import build_standin

    out = tmp_path_factory.mktemp("standin") / "tiny"
    build_standin(out, "tiny", seed=0, embedding_dim=128, fast_path=True)
    return out


@pytest.fixture(scope="session")
def fast_path(tiny_standin) -> Path:
    return tiny_standin / "fast-path"


@pytest.fixture(scope="session")
def tiny_models(tiny_standin):
    from instantid_edge.export.checkpoint import locate_checkpoint
    from instantid_edge.export.reference_models import load_reference_models

    return load_reference_models(locate_checkpoint(tiny_standin))


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, tiny_standin) -> Path:
    """The tiny stand-in exported to ONNX and OpenVINO (dynamic shapes)."""
    from instantid_edge.export.package import ExportRequest, export_package

    out = tmp_path_factory.mktemp("package") / "tiny"
    export_package(ExportRequest(tiny_standin, out), log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def fast_package(tmp_path_factory, tiny_standin, fast_path) -> Path:
    """The tiny stand-in with the SDXL-Lightning 4-step stand-in fused and the TAESD-XL stand-in as
    vae_decoder_tiny, both formats (the fast path's package)."""
    from instantid_edge.export.lora import LoraSpec
    from instantid_edge.export.package import ExportRequest, export_package

    out = tmp_path_factory.mktemp("package") / "fast"
    lora = LoraSpec(fast_path / "sdxl_lightning_4step_lora.safetensors")
    request = ExportRequest(tiny_standin, out, loras=(lora,), tiny_decoder=fast_path / "taesdxl_decoder.pth")
    export_package(request, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def runtime_package(request) -> Path:
    """A tiny exported package: from $INSTANTID_EDGE_TEST_PACKAGE where torch is absent, else exported here."""
    if os.environ.get(PACKAGE_ENV):
        return Path(os.environ[PACKAGE_ENV])
    if not HAS_TORCH:
        pytest.skip(f"no model package: set {PACKAGE_ENV} to a tiny package exported with the export extra")
    return request.getfixturevalue("tiny_package")


def _int8_package(tmp_path_factory, package: Path, face_pack: Path, method: str) -> Path:
    pytest.importorskip("nncf", reason="quantizing needs NNCF: pip install '.[quantize]'")
    from instantid_edge.quantize.package import QuantizeRequest, quantize_package

    out = tmp_path_factory.mktemp(f"int8-{method}") / "pkg"
    request = QuantizeRequest(package, out, method=method, samples=4, calibration_size=128, face_models=face_pack)
    quantize_package(request, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def weights_package(tmp_path_factory, runtime_package, face_pack) -> Path:
    """The tiny package quantized with `--method weights` (both formats)."""
    return _int8_package(tmp_path_factory, runtime_package, face_pack, "weights")


@pytest.fixture(scope="session")
def int4_package(tmp_path_factory, runtime_package, face_pack) -> Path:
    """The tiny package quantized with `--method int4` (both formats)."""
    return _int8_package(tmp_path_factory, runtime_package, face_pack, "int4")


@pytest.fixture(scope="session")
def int4_hybrid_package(tmp_path_factory, runtime_package, face_pack) -> Path:
    """The tiny package quantized with `--method int4-hybrid`: 4-bit MatMuls, calibrated integer convolutions."""
    return _int8_package(tmp_path_factory, runtime_package, face_pack, "int4-hybrid")


@pytest.fixture(scope="session")
def hybrid_package(tmp_path_factory, runtime_package, face_pack) -> Path:
    """The tiny package quantized with `--method hybrid`: calibrated integer convolutions in both formats."""
    return _int8_package(tmp_path_factory, runtime_package, face_pack, "hybrid")


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node local Ray cluster (tests/ray_cluster.py); only inside the namespace tests/test_serve_ray.py makes."""
    from ray_cluster import inside_namespace, local_cluster

    if not inside_namespace():
        pytest.skip("Ray tests run inside a loopback-only namespace that tests/test_serve_ray.py starts")
    with local_cluster(nodes=2) as cluster:
        yield cluster
