"""A memory mode changes what is open when and how calls are batched, never the result: CFG as two batch-1
calls equals the batch-2 call, and every mode gives the normal mode's latents (bit for bit here; within 1e-5
where kernels round batch 1 and 2 differently)."""

from __future__ import annotations

import numpy as np
import pytest

from instantid_edge.runtime.memory import MODES, MemoryPolicy
from instantid_edge.runtime.settings import GenerationSettings

LATENT_ATOL = 1e-5


@pytest.fixture(scope="module")
def face_rgb(astronaut):
    from instantid_edge.runtime.images import load_rgb

    return load_rgb(astronaut)


def _settings(**overrides) -> GenerationSettings:
    return GenerationSettings(**{"prompt": "a portrait", "seed": 8, "steps": 3, "height": 128, "width": 128,
                                 **overrides})  # fmt: skip


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cfg_as_two_batch_1_calls_equals_the_batch_2_call(runtime_package, face_pack, face_rgb, backend):
    from instantid_edge.runtime.noise_prediction import make_noise_predictor
    from instantid_edge.runtime.pipeline import InstantIDPipeline
    from instantid_edge.runtime.timing import StageTimer

    pipe = InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack)
    run = pipe.prepare(face_rgb, _settings())
    assert run.inputs.batch == 2
    x = run.start(0)[0] * np.float32(14.6)
    for step, t in ((0, 999.0), (1, 500.0)):  # IdentityNet on, then outside a window ending at step 1
        settings = _settings(control_end=0.34)
        timers = {mode: StageTimer() for mode in ("normal", "lean")}
        eps = {mode: make_noise_predictor(pipe.package, run.inputs, settings, timers[mode], MemoryPolicy(mode))(
            x, t, step) for mode in timers}  # fmt: skip
        np.testing.assert_allclose(eps["lean"], eps["normal"], rtol=0, atol=LATENT_ATOL)
        assert timers["lean"].calls["unet"] == 2 * timers["normal"].calls["unet"] == 2  # really split


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_no_memory_mode_changes_the_image(runtime_package, face_pack, face_rgb, backend):
    from instantid_edge.runtime.pipeline import InstantIDPipeline

    results = {}
    for mode in MODES:
        pipe = InstantIDPipeline.load(runtime_package, backend=backend, face_models=face_pack, memory=mode)
        results[mode] = pipe(face_rgb, _settings())
        split = 2 if MODES[mode].cfg_split else 1
        assert results[mode].timings["calls"]["unet"] == 3 * split
        # the denoisers open before the first step (the warm start's end), except where every step reopens them
        assert ("open" in results[mode].timings) is (mode != "minimal")
        # the lean modes open their sessions without ONNX Runtime's planned activation block, dropping the weights
        # it reads in place from the mapped data files
        levers = pipe.package.options.levers
        assert levers.ort_memory_pattern is (mode in ("normal", "low"))
        assert levers.ort_drop_mapped is (mode in ("lean", "minimal"))
        np.testing.assert_allclose(results[mode].latents, results["normal"].latents, rtol=0, atol=LATENT_ATOL)
        # 16x16 latents fit one decode tile: the image is the whole decode's
        np.testing.assert_array_equal(results[mode].images[0], results["normal"].images[0])


@pytest.mark.parametrize("mode", ["normal", "lean"])
def test_the_denoisers_are_compiled_once_before_the_first_step(runtime_package, face_pack, face_rgb, mode,
                                                               monkeypatch):  # fmt: skip
    """OpenVINO compiles for exact shapes: the shapes prepared before the first step are the ones the steps use,
    so the warm start (`seconds_to_first_step`) includes the compile and no step compiles again."""
    from instantid_edge.runtime.pipeline import InstantIDPipeline
    from instantid_edge.runtime.session import OvSession

    compiled: dict[str, list] = {}  # graph -> [compiled inside a call?] per compilation
    original_compile, original_run, calling = OvSession.compile_for, OvSession.run, []

    def counting(self, shapes):
        before = self._shapes
        original_compile(self, shapes)
        if self._shapes != before:  # in a denoising step? (normal mode compiles while the text encoders run)
            compiled.setdefault(self.name, []).append(bool({"identitynet", "unet"} & set(calling)))

    def run(self, feeds):
        calling.append(self.name)
        try:
            return original_run(self, feeds)
        finally:
            calling.pop()

    monkeypatch.setattr(OvSession, "run", run)
    monkeypatch.setattr(OvSession, "compile_for", counting)
    pipe = InstantIDPipeline.load(runtime_package, backend="openvino", face_models=face_pack, memory=mode, cache=False)
    result = pipe(face_rgb, _settings())
    assert compiled["unet"] == compiled["identitynet"] == [False], compiled  # once, before any call
    assert result.timings["run"]["seconds_to_first_step"] > 0 and result.timings["open"] > 0


def test_normal_mode_opens_the_denoisers_while_the_text_is_encoded(runtime_package, face_pack, face_rgb,
                                                                   monkeypatch):  # fmt: skip
    """The warm start overlaps: in normal mode the denoisers open in their own threads while the text encoders
    run; lean opens them one by one after the conditioning graphs closed, for a lower peak."""
    import threading

    from instantid_edge.runtime.package import ModelPackage
    from instantid_edge.runtime.pipeline import InstantIDPipeline
    from instantid_edge.runtime.text import TextEncoder

    opened, threads, overlapped = threading.Event(), [], []
    original_prepare, original_embed = ModelPackage.prepare, TextEncoder.embed

    def prepare(self, name, shapes):
        threads.append(threading.current_thread().name)
        opened.set()
        return original_prepare(self, name, shapes)

    def embed(self, *args, **kwargs):
        overlapped.append(opened.wait(timeout=3))  # is a denoiser opening while the text is encoded?
        return original_embed(self, *args, **kwargs)

    monkeypatch.setattr(ModelPackage, "prepare", prepare)
    monkeypatch.setattr(TextEncoder, "embed", embed)
    pipes = {}
    for mode, early in (("normal", True), ("lean", False)):
        opened.clear(), threads.clear(), overlapped.clear()
        pipe = InstantIDPipeline.load(runtime_package, backend="openvino", face_models=face_pack, memory=mode,
                                      cache=False)  # fmt: skip
        pipe(face_rgb, _settings(steps=1))
        assert overlapped == [early], mode
        background = [name for name in threads if name.startswith("open")]
        assert len(background) == (2 if early else 0), (mode, threads)
        pipes[mode] = pipe
    opened.clear(), threads.clear(), overlapped.clear()
    pipes["normal"](face_rgb, _settings(steps=1))  # the next image: normal kept them open, no thread starts
    assert overlapped == [False] and threads == ["MainThread", "MainThread"], threads


def test_a_failed_run_leaves_nothing_opening_and_background_errors_surface(runtime_package, face_pack, face_rgb,
                                                                          monkeypatch):  # fmt: skip
    import time

    from instantid_edge.runtime.errors import ConfigError, PackageError
    from instantid_edge.runtime.package import ModelPackage
    from instantid_edge.runtime.pipeline import InstantIDPipeline
    from instantid_edge.runtime.text import TextEncoder

    done = []

    def slow_prepare(self, name, shapes):
        time.sleep(0.3)
        done.append(name)

    def failing_embed(self, *args, **kwargs):
        raise ConfigError("the text stage failed")

    pipe = InstantIDPipeline.load(runtime_package, backend="onnxruntime", face_models=face_pack, memory="normal")
    with monkeypatch.context() as patch:
        patch.setattr(ModelPackage, "prepare", slow_prepare)
        patch.setattr(TextEncoder, "embed", failing_embed)
        with pytest.raises(ConfigError, match="the text stage failed"):
            pipe(face_rgb, _settings(steps=1))
        assert sorted(done) == ["identitynet", "unet"]  # waited for, not left running

    def broken_prepare(self, name, shapes):
        raise PackageError(f"{name} is broken")

    monkeypatch.setattr(ModelPackage, "prepare", broken_prepare)
    with pytest.raises(PackageError, match="is broken"):
        pipe(face_rgb, _settings(steps=1))
