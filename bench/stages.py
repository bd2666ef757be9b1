"""Time every stage of one configuration on its own: runtime (ONNX Runtime / OpenVINO) or the PyTorch peer.

Load (and OpenVINO compilation, which happens on a graph's first run at a shape) is reported apart from
steady state: each stage runs once to warm up, then `repeat` times. In the low and minimal memory modes only the
graphs of the stage being timed are open, which is how the full-size architecture fits in 24 GiB; the
end-to-end run then reopens sessions as it needs them. The PyTorch peer always loads one stage's models at
a time; its end-to-end figure is one real run in the normal mode, else (or when asked: the reference at
upstream defaults beside a fast profile) computed from its stages: steps x one step + the rest, so labelled.
A configuration samples as its fields say (a run profile resolved by run.py): sampler, steps, guidance,
decoder; with the tiny decoder, the full VAE decoder is timed too (`decode_full`), on the same backend.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..runtime.manifest import TINY_DECODER
from ..runtime.memory import release_memory
from ..runtime.settings import GenerationSettings
from ..tools.defaults import default_face_photo
from ..tools.peak_memory import PeakMemory

PROMPT = "a portrait photo of a person, studio lighting, detailed"


@dataclass(frozen=True)
class Config:
    name: str
    backend: str  # torch, onnxruntime, openvino
    precision: str  # fp32, int8
    width: int
    height: int
    steps: int
    guidance: float
    repeat: int
    threads: int | None
    face_models: str
    package: str | None = None
    checkpoint: str | None = None
    memory: str = "auto"
    cache_dir: str | None = None
    sampler: str = "euler"
    timestep_spacing: str | None = None
    eta: float | None = None
    timesteps: tuple[int, ...] | None = None
    decoder: str = "full"
    loras: tuple[str, ...] = ()  # PyTorch peer: LoRA files fused as the package's were
    tiny_decoder: str | None = None  # PyTorch peer: TAESD-XL weights
    computed_end_to_end: bool = False  # PyTorch peer: steps x step + the rest instead of a real run

    def settings(self) -> GenerationSettings:
        timesteps = tuple(self.timesteps) if self.timesteps else None
        return GenerationSettings(prompt=PROMPT, steps=self.steps, guidance=self.guidance, width=self.width,
                                  height=self.height, seed=0, sampler=self.sampler,
                                  timestep_spacing=self.timestep_spacing, eta=self.eta, timesteps=timesteps,
                                  decoder=self.decoder).validate()  # fmt: skip


def _timed(function, repeat: int) -> dict:
    function()  # warm-up: first-run costs (compilation, allocation) are load, not steady state
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": len(times)}


def time_runtime(config: Config) -> dict:
    from ..runtime.pipeline import InstantIDPipeline

    face_rgb = default_face_photo()[0]
    with PeakMemory(reset=True) as peak:
        start = time.perf_counter()
        cache = Path(config.cache_dir) if config.cache_dir else None
        pipe = InstantIDPipeline.load(config.package, config.backend, config.threads, config.face_models, cache,
                                      memory=config.memory, cache=cache is not None)  # fmt: skip
        run = pipe.prepare(face_rgb, config.settings())
        load_seconds = time.perf_counter() - start
        stages = _time_conditioning(pipe, run, face_rgb, config.repeat)
        stages.update(_time_denoising_and_decoding(pipe, run, config.repeat))
        stages["end_to_end"] = _time_end_to_end(pipe, face_rgb, run.settings, config.repeat)
    return {"config": asdict(config), "load_seconds": load_seconds, "stages": stages, "memory": peak.to_dict(),
            "memory_mode": pipe.memory.mode, "memory_plan": pipe.memory.to_dict(), "batch": run.inputs.batch,
            "decoder": run.decoder}  # fmt: skip


def _time_conditioning(pipe, run, face_rgb, repeat: int) -> dict:
    """Face analysis, both text encoders (the prompt cache cleared each time), the image adapter."""
    import numpy as np

    from ..runtime.face import face_conditioning

    settings, package = run.settings, pipe.package
    stages = {"face": _timed(lambda: face_conditioning(pipe.analyzer, face_rgb, settings.width, settings.height),
                             repeat)}  # fmt: skip

    def text():
        pipe.text.clear_cache()
        pipe.text.embed(settings.prompt, settings.negative_prompt, settings.cfg)

    stages["text"] = _timed(text, repeat)
    embedding = {"image_embeds": np.zeros((1, 1, package.manifest.architecture.embedding_dim), np.float32)}
    stages["image_proj"] = _timed(lambda: package.session("image_proj").run(embedding), repeat)
    pipe.memory.close("conditioning", package)
    return stages


def _time_denoising_and_decoding(pipe, run, repeat: int) -> dict:
    """Each denoiser graph on its own (under the pipeline's memory policy, which in minimal mode closes each
    after its call), one denoising step, and the decode (with the tiny decoder, the full VAE's too)."""
    import numpy as np

    from ..runtime.decode import decode
    from ..runtime.noise_prediction import identitynet_feeds, make_noise_predictor, unet_feeds
    from ..runtime.timing import StageTimer

    package, memory, stages, first = pipe.package, pipe.memory, {}, {}
    inputs = run.inputs.halves()[-1] if memory.cfg_split else run.inputs  # the call the run makes
    x = np.concatenate([run.start(0)[0] * np.float32(14.6)] * inputs.batch)
    feeds = identitynet_feeds(inputs, x, 500.0, 0.8)
    begin = time.perf_counter()
    residuals = package.session("identitynet").run(feeds)  # OpenVINO compiles on a graph's first run
    first["identitynet"] = time.perf_counter() - begin
    stages["identitynet"] = _timed(lambda: package.session("identitynet").run(feeds), repeat)
    memory.close("identitynet", package)
    feeds = unet_feeds(inputs, inputs.context, x, 500.0, residuals, 0.8, inputs.face_mask)
    begin = time.perf_counter()
    package.session("unet").run(feeds)
    first["unet"] = time.perf_counter() - begin
    stages["unet"] = _timed(lambda: package.session("unet").run(feeds), repeat)
    memory.close("unet", package)
    calls = len(run.inputs.halves()) if memory.cfg_split else 1
    if memory.closes_after("unet"):
        total = calls * (stages["identitynet"]["median"] + stages["unet"]["median"])
        stages["denoise_step"] = {"median": total, "kind": "sum (minimal memory: the graphs take turns)"}
    else:
        eps = make_noise_predictor(package, run.inputs, run.settings, StageTimer(), memory)
        stages["denoise_step"] = _timed(lambda: eps(x[:1], 500.0, 0), repeat)
    stages["denoise_step"]["calls_per_graph"] = calls
    stages["denoise_step"]["first_calls"] = first
    memory.close("denoising", package)
    stages["decode"] = _timed(lambda: decode(package, x[:1], run.decoder, memory.decode_tile), repeat)
    memory.close("decoding", package)
    if run.decoder != "vae_decoder":  # the full VAE on the same backend, for the ratio
        stages["decode_full"] = _timed(lambda: decode(package, x[:1]), repeat)
        memory.close("decoding", package)
    return stages


def _time_end_to_end(pipe, face_rgb, settings, repeat: int) -> dict:
    seconds = []
    for _ in range(max(1, repeat // 2)):
        pipe.text.clear_cache()
        begin = time.perf_counter()
        pipe(face_rgb, settings)
        seconds.append(time.perf_counter() - begin)
    lean = pipe.memory.mode != "normal"
    kind = f"one run of generate (memory mode {pipe.memory.mode}" + (
        ": graphs reopened as the run needs them)" if lean else ")"
    )
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": len(seconds),
            "kind": kind}  # fmt: skip


def _loaded(loads: dict, name: str, load):
    start = time.perf_counter()
    result = load()
    loads[name] = time.perf_counter() - start
    return result


def _torch_conditioning(loader, analyzer, settings, face_rgb, repeat, stages, loads):
    """Face, image tokens and text, timed; returns the denoiser's inputs (text encoders freed on return)."""
    import torch

    from ..export.reference import encode_text
    from ..runtime.face import face_conditioning

    stages["face"] = _timed(lambda: face_conditioning(analyzer, face_rgb, settings.width, settings.height), repeat)
    faces = face_conditioning(analyzer, face_rgb, settings.width, settings.height)
    resampler = _loaded(loads, "image_proj", loader.resampler)
    embedding = torch.from_numpy(faces.face.embedding).reshape(1, 1, -1)
    stages["image_proj"] = _timed(lambda: resampler(embedding), repeat)
    tokens = torch.cat([resampler(torch.zeros_like(embedding)), resampler(embedding)])
    text_models = loader.text_models()
    prompts = [settings.prompt, ""] if settings.cfg else [settings.prompt]
    stages["text"] = _timed(lambda: [encode_text(text_models, prompt) for prompt in prompts], repeat)
    text, pooled = encode_text(text_models, settings.prompt)
    return faces, tokens, text, pooled


def _torch_denoiser(loader, settings, faces, tokens, text, pooled, repeat, stages, loads) -> None:
    import torch

    from ..runtime.settings import time_ids

    batch = 2 if settings.cfg else 1
    identitynet = _loaded(loads, "identitynet", loader.identitynet)
    unet, scale = _loaded(loads, "unet", lambda: loader.unet(tokens.shape[1]))
    tokens, text, pooled = tokens[-batch:], text.repeat(batch, 1, 1), pooled.repeat(batch, 1)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([time_ids(settings.height, settings.width)] * batch)}
    control = torch.tensor(faces.control).permute(2, 0, 1)[None].float().div(255).repeat(batch, 1, 1, 1)
    x, t = torch.randn(batch, *loader.latent_shape(settings.height, settings.width)), torch.tensor(500.0)
    scale.value = settings.ip_scale
    context = torch.cat([text, tokens], dim=1)

    def run_identitynet():
        return identitynet(x, t, encoder_hidden_states=tokens, controlnet_cond=control, conditioning_scale=0.8,
                           added_cond_kwargs=added, return_dict=False)  # fmt: skip

    down, mid = run_identitynet()

    def run_unet():
        return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid)  # fmt: skip

    stages["identitynet"] = _timed(run_identitynet, repeat)
    stages["unet"] = _timed(run_unet, repeat)
    stages["denoise_step"] = {"median": stages["identitynet"]["median"] + stages["unet"]["median"], "kind": "sum"}


def _torch_decode(loader, settings, repeat, stages, loads, tiny_decoder: str | None = None) -> None:
    import torch

    latents = torch.randn(1, *loader.latent_shape(settings.height, settings.width))
    if settings.decoder == "tiny":
        from ..export.taesd import TinyDecoderGraph, load_tiny_decoder

        tiny = _loaded(loads, TINY_DECODER, lambda: TinyDecoderGraph(load_tiny_decoder(tiny_decoder)))
        stages["decode"] = _timed(lambda: tiny(latents), repeat)
        return
    vae = _loaded(loads, "vae_decoder", loader.vae)
    stages["decode"] = _timed(lambda: vae.decode(latents / vae.config.scaling_factor), repeat)


def time_torch(config: Config) -> dict:
    """The PyTorch reference, stage by stage; components are loaded for their stage and freed after it."""
    import torch

    from ..export.checkpoint import locate_checkpoint
    from ..export.lora import LoraSpec
    from ..export.reference import generate
    from ..export.reference_models import CheckpointLoader, load_reference_models
    from ..runtime.face import FaceAnalyzer

    if config.threads:
        torch.set_num_threads(config.threads)
    settings, face_rgb, stages, loads = config.settings(), default_face_photo()[0], {}, {}
    loras = [LoraSpec(Path(path)) for path in config.loras]
    loader = CheckpointLoader(locate_checkpoint(config.checkpoint), loras=loras)
    analyzer = FaceAnalyzer(config.face_models)
    with PeakMemory() as peak, torch.inference_mode():
        inputs = _torch_conditioning(loader, analyzer, settings, face_rgb, config.repeat, stages, loads)
        release_memory()
        _torch_denoiser(loader, settings, *inputs, config.repeat, stages, loads)
        release_memory()
        _torch_decode(loader, settings, config.repeat, stages, loads, config.tiny_decoder)
        release_memory()
        if config.memory != "normal" or config.computed_end_to_end:
            total = sum(stages[s]["median"] for s in ("face", "image_proj", "text", "decode"))
            why = "asked for" if config.computed_end_to_end else "the models do not fit in memory together"
            stages["end_to_end"] = {"median": total + settings.steps * stages["denoise_step"]["median"],
                                    "kind": f"computed: {settings.steps} x denoise_step + face, image_proj, text, "
                                            f"decode ({why})"}  # fmt: skip
        else:
            models = load_reference_models(loader.paths, loras=loras, tiny_decoder=config.tiny_decoder)
            begin = time.perf_counter()
            generate(models, analyzer, face_rgb, replace(settings))
            stages["end_to_end"] = {
                "median": time.perf_counter() - begin,
                "runs": 1,
                "kind": "one run of the reference",
            }
    batch = 2 if settings.cfg else 1
    return {"config": asdict(config), "load_seconds": sum(loads.values()), "loads": loads, "stages": stages,
            "memory": peak.to_dict(), "batch": batch, "decoder": settings.decoder}  # fmt: skip
