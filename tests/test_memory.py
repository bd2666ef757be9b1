"""The memory policy: which mode `auto` picks for which predicted peaks, and what each mode closes when."""

from __future__ import annotations

import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.memory import MEMORY_MODES, STAGES, MemoryPolicy

GIB = 2**30


@pytest.mark.parametrize(
    "peaks, budget, expected",
    [
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 20 * GIB, "normal"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 4 * GIB, "low"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 3.5 * GIB, "lean"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 2 * GIB, "minimal"),
        ({"normal": 5 * GIB, "low": 4 * GIB, "lean": 3 * GIB, "minimal": 2 * GIB}, 1 * GIB, "minimal"),  # none fits
        (None, 8 * GIB, "low"),  # no prediction: the safe middle
    ],
)
def test_auto_takes_the_fastest_mode_whose_predicted_peak_fits(peaks, budget, expected):
    assert MemoryPolicy.choose("auto", peaks, budget).mode == expected


def test_explicit_modes_are_kept_and_unknown_ones_refused():
    modes = ["normal", "low", "lean", "minimal"]
    assert [MemoryPolicy.choose(mode).mode for mode in MEMORY_MODES[1:]] == modes
    with pytest.raises(ConfigError, match="memory mode must be one of auto, normal, low, lean, minimal"):
        MemoryPolicy.choose("tiny")


def test_each_mode_closes_what_it_promises_after_each_stage():
    modes = ("normal", "low", "lean", "minimal")
    closes = {mode: {s: MemoryPolicy(mode).closes_after(s) for s in STAGES} for mode in modes}
    assert not any(closes["normal"].values())
    conditioning = ("text_encoder", "text_encoder_2", "image_proj", "vae_encoder")
    low = {"conditioning": conditioning, "identitynet": (), "unet": (), "denoising": ("identitynet", "unet"),
           "decoding": ("vae_decoder", "vae_decoder_tiny")}  # fmt: skip
    assert closes["low"] == low and closes["lean"] == low
    assert closes["minimal"] == {**closes["low"], "identitynet": ("identitynet",), "unet": ("unet",)}
    with pytest.raises(ValueError, match="unknown stage"):
        MemoryPolicy("low").closes_after("loading")


def test_lean_and_minimal_split_cfg_tile_the_decode_and_drop_mapped_weights():
    modes = ("normal", "low", "lean", "minimal")
    assert [MemoryPolicy(m).cfg_split for m in modes] == [False, False, True, True]
    assert [MemoryPolicy(m).decode_tile for m in modes] == [None, None, 64, 64]
    assert [MemoryPolicy(m).drops_mapped_weights for m in modes] == [False, False, True, True]


def _mapped_rss(path) -> int:
    """Resident bytes of this process's maps of `path` (from /proc/self/smaps)."""
    import os

    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = fields[-1] == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def test_dropping_mapped_pages_frees_them_and_keeps_the_data(tmp_path):
    import mmap

    from instantid_edge.runtime.memory import drop_mapped_pages

    path = tmp_path / "weights.bin"
    data = bytes(range(256)) * 4096 * 4  # 4 MiB
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert view[:] == data  # every page read, so resident
        assert _mapped_rss(path) >= len(data) // 2
        assert drop_mapped_pages(path) >= len(data)
        assert _mapped_rss(path) == 0
        assert view[:] == data  # read again from the file
    assert drop_mapped_pages(tmp_path / "not-mapped.bin") == 0


def test_private_writable_maps_are_dropped_only_when_asked_and_while_unwritten(tmp_path):
    """ONNX Runtime maps each external weight privately and writable: such a map, found unwritten, is dropped when
    named, and no longer found once a page was written (dropping it would lose the write). Unnamed (OpenVINO, which
    writes such pages while it compiles), only read-only maps are dropped."""
    import mmap

    from instantid_edge.runtime.memory import drop_mapped_pages, unwritten_maps

    path = tmp_path / "model.onnx.data"
    data = bytes(range(256)) * 4096 * 4  # 4 MiB
    path.write_bytes(data)
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    with view:
        assert view[:] == data
        unwritten = unwritten_maps(path)
        assert len(unwritten) == 1
        assert drop_mapped_pages(path) == 0 and _mapped_rss(path) >= len(data) // 2
        assert drop_mapped_pages(path, unwritten) >= len(data) and _mapped_rss(path) == 0
        assert view[:] == data  # read again from the file
        view[0] = 255  # a private copy of the first page now
        assert unwritten_maps(path) == frozenset()
        assert drop_mapped_pages(path, unwritten_maps(path)) == 0
        assert view[0] == 255 and view[1:] == data[1:]
    assert path.read_bytes() == data


def test_mapped_pages_are_dropped_while_a_block_runs_and_after_it(tmp_path):
    """What OpenVINO's compile does: read a mapped file page by page while the pages read so far get dropped."""
    import mmap
    import time

    from instantid_edge.runtime.memory import dropping_mapped_pages

    path = tmp_path / "weights.bin"
    data = bytes(range(256)) * 4096 * 4  # 4 MiB
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        with dropping_mapped_pages(path, every=0.05):
            assert view[:] == data
            deadline = time.monotonic() + 5.0
            while _mapped_rss(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _mapped_rss(path) == 0  # dropped inside the block
            assert view[: len(data) // 2] == data[: len(data) // 2]  # read again from the file
        assert _mapped_rss(path) == 0  # and once more on the way out
        assert view[:] == data


def test_openvino_drops_the_mapped_weights_once_compiled_and_computes_the_same(weights_package):
    """OpenVINO keeps the IR's weights file mapped after compile_model; the session drops those pages (the
    ov_drop_mapped lever), and what the compiled model reads again comes back from the file: same outputs."""
    import numpy as np

    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.session import Levers, SessionOptions, open_session

    manifest = read_manifest(weights_package)
    shapes = manifest.input_shapes("unet", 128, 128, 1)
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.standard_normal(shape).astype(np.float32) for spec, shape in
             zip(manifest.graph("unet").inputs, shapes.values(), strict=True)}  # fmt: skip
    resident, outputs = {}, {}
    for drop in (False, True):
        options = SessionOptions("openvino", levers=Levers(ov_drop_mapped=drop))
        session = open_session(manifest.graph("unet"), weights_package, options)
        session.compile_for(shapes)
        weights = session._path.with_suffix(".bin")
        resident[drop] = _mapped_rss(weights)
        outputs[drop] = session.run(feeds)
        del session
    assert weights.stat().st_size > 1 << 20
    assert resident[False] > weights.stat().st_size // 4 and resident[True] == 0
    for name, value in outputs[False].items():
        np.testing.assert_array_equal(outputs[True][name], value)


def test_onnxruntime_drops_the_weights_it_reads_in_place_and_computes_the_same(int4_package):
    """ONNX Runtime reads int4 MatMulNBits weights in place from the mapped data file; with ort_drop_mapped (the
    lean modes) none of those pages stays resident after a call, and the outputs do not change."""
    import numpy as np

    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.session import Levers, SessionOptions, open_session

    manifest = read_manifest(int4_package)
    graph = manifest.graph("unet")
    shapes = manifest.input_shapes("unet", 128, 128, 1)
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.standard_normal(shape).astype(np.float32) for spec, shape in
             zip(graph.inputs, shapes.values(), strict=True)}  # fmt: skip
    (data,) = graph.weight_paths(int4_package, "onnx")
    resident, outputs = {}, {}
    for drop in (False, True):
        session = open_session(graph, int4_package, SessionOptions(levers=Levers(ort_drop_mapped=drop)))
        outputs[drop] = session.run(feeds)
        resident[drop] = _mapped_rss(data)
        del session
    assert resident[False] > data.stat().st_size // 4 and resident[True] == 0
    for name, value in outputs[False].items():
        np.testing.assert_array_equal(outputs[True][name], value)
