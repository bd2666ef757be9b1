"""The backends' memory levers (runtime/session.py Levers): parsed from bench-memory's --lever, applied to the
sessions they open, and measured per graph by bench-memory's worker."""

from __future__ import annotations

import pytest

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.session import Levers


def test_levers_parse_switches_and_counts_and_refuse_the_rest():
    assert Levers.parse(["ort_arena=0", "ov_streams=2"]) == Levers(ort_arena=False, ov_streams=2)
    assert Levers.parse([]) == Levers()
    for bad in ("ort_arena", "arena=0", "ov_mmap=yes"):
        with pytest.raises(ConfigError, match="--lever takes NAME=VALUE"):
            Levers.parse([bad])


def test_ort_levers_reach_the_session(runtime_package):
    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.session import SessionOptions, open_session

    graph = read_manifest(runtime_package).graph("image_proj")
    levers = Levers(ort_arena=False, ort_memory_pattern=False, ort_prepacking=False)
    session = open_session(graph, runtime_package, SessionOptions("onnxruntime", levers=levers))
    options = session._session.get_session_options()
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.disable_prepacking") == "1"


def test_ov_levers_reach_the_compiled_model(runtime_package):
    import numpy as np

    from instantid_edge.runtime.manifest import read_manifest
    from instantid_edge.runtime.session import SessionOptions, open_session

    graph = read_manifest(runtime_package).graph("image_proj")
    session = open_session(graph, runtime_package, SessionOptions("openvino", levers=Levers(ov_streams=2)))
    session.run({"image_embeds": np.zeros((1, 1, graph.inputs[0].shape[-1]), np.float32)})
    assert int(session._compiled.get_property("NUM_STREAMS")) == 2
    assert session._core.get_property("ENABLE_MMAP") is True


def test_bench_memory_measures_one_graph(runtime_package):
    from instantid_edge.bench.memory_breakdown import measure_graph, summarize

    job = {"package": str(runtime_package), "backend": "openvino", "graph": "unet", "height": 128, "width": 128,
           "batch": 2, "threads": 2}  # fmt: skip
    result = measure_graph(job)
    row = summarize({**result, "job": job})
    assert {"open", "compile", "first", "steady"} <= set(result)
    assert row["weights_on_disk"] > 0 and row["peak"] >= row["process"] and row["seconds"] > 0
