"""The InstantID pipeline on a model package: photo + prompt -> portrait, with no PyTorch.

    pipe = InstantIDPipeline.load("pkg", backend="openvino", threads=2)   # once
    result = pipe(face_rgb, GenerationSettings(prompt="..."))             # many times
    result.images[0]                                                      # HxWx3 uint8

Stages: face analysis and the control image (`FaceConditioning`); face tokens (uncond tokens come precomputed in
the package); text embeddings (cached per prompt); together the noise predictor's `PredictorInputs`; then per
image the sampler loop over IdentityNet + UNet, the decode (the VAE, or TAESD-XL with `decoder="tiny"`) and the
invisible watermark (provenance/; opt out with `pipe.watermark = False`). The memory policy (`pipe.memory`,
chosen per run under "auto": memory_estimate.py) closes graphs between stages, may split CFG into two calls and
may decode in tiles. `prepare` runs everything before the loop, for callers that time stages apart
(bench).

InstantID's app controls (settings.py): face-region control (face_region.py), weighted prompts (text.py),
extra ControlNets with their condition images (controlnets.py) and img2img from an init image (img2img.py).
What a package cannot do (older exports) is refused up front (capabilities.py); `face_region=None` means on
where the package can.
"""

from __future__ import annotations

import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends import cache_dir
from .capabilities import Capabilities
from .controlnets import control_images
from .decode import decode
from .errors import ConfigError, FaceModelError, check_finite
from .face import FaceAnalyzer, FaceConditioning, face_conditioning
from .face_region import face_region_mask, latent_mask, residual_masks
from .images import official_size, resize_like_instantid
from .img2img import init_distribution, sample_latents
from .memory import MemoryPolicy, check_mode, opening_order, process_memory
from .memory_estimate import MemoryModel, RunShape, plan
from .noise import check_given_noise, image_rng
from .noise_prediction import ExtraControl, PredictorInputs, make_noise_predictor
from .package import ModelPackage
from .provenance import watermark_image
from .sampling import Img2ImgStart, sample, schedule_for
from .session import SessionOptions
from .settings import DEFAULT_STRENGTH, GenerationSettings, img2img_steps, time_ids
from .text import TextEncoder
from .timing import StageTimer, process_age


@dataclass
class GenerationResult:
    images: list[np.ndarray]  # HxWx3 uint8 each
    latents: np.ndarray  # final latents [N, C, H/f, W/f], before decoding
    conditioning: FaceConditioning  # what the photos gave: the face used, the pose, the control image
    settings: GenerationSettings  # with the width and height actually used
    timings: dict = field(default_factory=dict)
    watermarked: bool = False  # images carry the invisible watermark (provenance/)


@dataclass(frozen=True)
class PreparedRun:
    """Everything before the sampler loop."""

    settings: GenerationSettings  # validated, with the output width and height
    faces: FaceConditioning
    inputs: PredictorInputs
    latent_shape: tuple[int, int, int]  # one image's (C, h, w)
    given_noise: np.ndarray | None  # [N, C, h, w] unit noise given instead of the seed rule
    decoder: str  # the decoder graph (manifest.DECODER_GRAPHS[settings.decoder])
    init: tuple[np.ndarray, np.ndarray] | None = None  # img2img: the init image's latent mean and std
    opening: tuple[Future, ...] = ()  # the denoisers opening in the background (Mode.opens_early)

    @property
    def steps(self) -> int:
        """The steps the sampler runs: all of them, or img2img's share."""
        if self.init is None:
            return self.settings.steps
        return img2img_steps(self.settings.steps, self.settings.strength)

    def start(self, index: int) -> tuple[np.ndarray, np.random.Generator, Img2ImgStart | None]:
        """Image `index`'s starting unit noise [1, C, h, w], its step generator (noise.image_rng) and, for
        img2img, where it starts (latents sampled with the generator's next draw)."""
        noise, rng = image_rng(self.settings.seed, index, self.latent_shape)
        if self.given_noise is not None:
            noise = self.given_noise[index]
        init = None
        if self.init is not None:
            init = Img2ImgStart(sample_latents(*self.init, rng), self.settings.steps - self.steps)
        return noise[None], rng, init


class InstantIDPipeline:
    watermark = True  # result images carry the invisible watermark; `pipe.watermark = False` opts out

    def __init__(
        self, package: ModelPackage, analyzer: FaceAnalyzer, memory: str = "normal", budget: int | None = None
    ):
        """`memory`: a mode of runtime.memory.MEMORY_MODES; "auto" predicts each mode's peak for every run's size
        and batch and takes the fastest that fits `budget` bytes (default: physical memory less a margin)."""
        self.memory_mode, self.memory_budget = check_mode(memory), budget
        self.memory = MemoryPolicy("normal" if memory == "auto" else memory)  # auto decides per run, in prepare
        self._process = process_memory().get("rss", 0)  # before any graph opens: the base of auto's prediction
        self.package, self.analyzer = package, analyzer
        self.text = TextEncoder(package)
        expected = package.manifest.architecture.embedding_dim
        if analyzer.embedding_dim != expected:
            raise FaceModelError(
                f"the face pack {analyzer.pack} gives {analyzer.embedding_dim}-d embeddings but the package expects "
                f"{expected}-d; use the matching pack (antelopev2: 512-d)"
            )

    @classmethod
    def load(
        cls,
        package: str | Path,
        backend: str = "onnxruntime",
        threads: int | None = None,
        face_models: str | Path | None = None,
        cache_dir: Path | None = None,
        precision_hint: str = "f32",
        memory: str = "normal",
        cache: bool = True,
        memory_budget: int | None = None,
    ) -> InstantIDPipeline:
        """`cache=False` keeps OpenVINO from writing compiled blobs (as large as the weights) to disk."""
        cache_dir = (cache_dir or _openvino_cache()) if cache else None
        options = SessionOptions(backend, threads, cache_dir, precision_hint)
        return cls(ModelPackage(package, options), FaceAnalyzer(face_models), check_mode(memory), memory_budget)

    def plan_memory(self, settings: GenerationSettings, decoder: str) -> MemoryPolicy:
        """The memory policy of a run of `settings` (validated, with its size), with the predicted peak of each
        mode (auto chooses by it; the others only report it)."""
        options = self.package.options
        model = MemoryModel(self.package.manifest, options.backend, cache=options.cache_dir is not None)
        shape = RunShape(settings.height, settings.width, 2 if settings.cfg else 1, decoder)
        return plan(model, shape, self._process, self.memory_budget, self.memory_mode)

    def prepare(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        timer: StageTimer | None = None,
        init_rgb: np.ndarray | None = None,
        control_rgb: dict[str, np.ndarray | None] | None = None,
        open_early: bool = False,
    ) -> PreparedRun:
        """Face analysis, face tokens and text embeddings, batched for the noise predictor; `noise` checked.
        `init_rgb`: img2img's init photo; `control_rgb`: each extra ControlNet's photo or condition image.
        `open_early`: where the memory mode allows (Mode.opens_early), the denoisers open in the background once
        the inputs are checked (the run's `opening`, joined by the caller before the first step)."""
        settings.validate()
        decoder = self.package.manifest.decoder_graph(settings.decoder)  # what the package lacks fails first
        schedule_for(settings, self.package.scheduler_config)
        timer = timer or StageTimer()
        canvas = pose_rgb if pose_rgb is not None else face_rgb
        settings = self._resolve(settings.validate(), canvas, init_rgb is not None)
        width, height = settings.width, settings.height
        self.memory = self.plan_memory(settings, decoder)
        memory = self.memory
        levers = replace(self.package.options.levers, ort_memory_pattern=memory.planned_activations,
                         ort_drop_mapped=memory.drops_mapped_weights)  # fmt: skip
        self.package.use_levers(levers)
        faces = timer.run("face", face_conditioning, self.analyzer, face_rgb, width, height, pose_rgb)
        shape = self.package.manifest.architecture.latent_shape(height, width)
        if noise is not None:
            noise = check_given_noise(noise, (settings.num_images, *shape), f"{width}x{height} x {settings.num_images}")
        controls = control_images(self.package.manifest.controlnets, settings.controls, control_rgb or {},
                                  resize_like_instantid(canvas), width, height)  # fmt: skip
        opening = self._open_in_background(settings) if open_early and self.memory.opens_early else ()
        try:  # the inputs are checked by now: the text and image stages run while the denoisers open
            inputs = self._predictor_inputs(settings, faces, controls, timer)
            init = None
            if init_rgb is not None:
                init = timer.run("vae_encoder", init_distribution, self.package, init_rgb, width, height)
        except BaseException:
            futures.wait(opening)  # no graph is left opening behind a failed run
            raise
        self.memory.close("conditioning", self.package)
        return PreparedRun(settings, faces, inputs, shape, noise, decoder, init, opening)

    @staticmethod
    def _denoisers(settings: GenerationSettings, controlnets: tuple[str, ...]) -> tuple[str, ...]:
        """The graphs the denoising steps call."""
        return ("identitynet",) * (settings.identitynet_scale > 0) + controlnets + ("unet",)

    def _open_in_background(self, settings: GenerationSettings) -> tuple[Future, ...]:
        """Open IdentityNet and the UNet where they are not open yet, each in its own thread, for a one-chunk
        prompt (a weighted prompt's longer text compiles again in `_open`)."""
        names = tuple(name for name in self._denoisers(settings, ()) if not self.package.is_open(name))
        if not names:  # the next image of a service: nothing to open (another size compiles in `_open`)
            return ()
        batch = 1 if self.memory.cfg_split else (2 if settings.cfg else 1)
        manifest = self.package.manifest
        pool = ThreadPoolExecutor(len(names), thread_name_prefix="open")
        opening = tuple(pool.submit(self.package.prepare, name,
                                    manifest.input_shapes(name, settings.height, settings.width, batch))
                        for name in names)  # fmt: skip
        pool.shutdown(wait=False)  # its threads end with their work
        return opening

    def _open(self, names: tuple[str, ...], settings: GenerationSettings, inputs: PredictorInputs,
              opening: tuple[Future, ...] = ()) -> None:  # fmt: skip
        """Open the denoisers and compile them for this run's shapes, so the first step starts ready (after
        what opened in the background, whose errors surface here)."""
        for future in opening:
            future.result()
        batch = 1 if self.memory.cfg_split else int(inputs.text.shape[0])
        manifest = self.package.manifest
        for name in opening_order(names, self.package.graph_bytes()):
            self.package.prepare(name, manifest.input_shapes(name, settings.height, settings.width, batch,
                                                             inputs.text.shape[1]))  # fmt: skip

    def _resolve(self, settings: GenerationSettings, canvas: np.ndarray, img2img: bool) -> GenerationSettings:
        """The settings a run uses: the output size, face region on where the package can (unless said), the
        img2img strength; what the package cannot do is refused."""
        photo_size = official_size(canvas.shape[1], canvas.shape[0])[1]
        width, height = self.package.output_size(settings.width, settings.height, photo_size)
        able = Capabilities.of(self.package.manifest)
        face_region = able.face_region if settings.face_region is None else settings.face_region
        if settings.strength is not None and not img2img:
            raise ConfigError("strength applies to img2img only: give an init image (--init-image) or no strength")
        strength = (settings.strength or DEFAULT_STRENGTH) if img2img else None
        able.require(face_region, settings.weighted_prompts, img2img, tuple(name for name, _ in settings.controls))
        return replace(settings, width=width, height=height, face_region=face_region, strength=strength).validate()

    def _predictor_inputs(self, settings: GenerationSettings, faces: FaceConditioning, controls, timer):
        embedding = faces.face.embedding.reshape(1, 1, -1).astype(np.float32)
        tokens = timer.run("image_proj", self.package.session("image_proj").run, {"image_embeds": embedding})
        tokens = check_finite("image_proj", tokens["image_tokens"])
        text = timer.run("text", self.text.embed, settings.prompt, settings.negative_prompt, settings.cfg,
                         settings.weighted_prompts)  # fmt: skip
        batch = 2 if settings.cfg else 1
        if settings.cfg:
            tokens = np.concatenate([self.package.uncond_image_tokens, tokens])
        face_mask = masks = None  # a UNet exported before face-region control takes no mask
        if settings.face_region:
            region = face_region_mask(faces)
            factor = self.package.manifest.architecture.vae_scale_factor
            face_mask = latent_mask(region, factor)
            masks = residual_masks(region, *face_mask.shape[2:])
        elif Capabilities.of(self.package.manifest).face_region:  # ones: the face attention everywhere
            latent = self.package.manifest.architecture.latent_shape(settings.height, settings.width)
            face_mask = np.ones((1, 1, *latent[1:]), np.float32)
        return PredictorInputs(
            text=text.hidden,
            pooled=text.pooled,
            image_tokens=tokens,
            time_ids=np.array([time_ids(settings.height, settings.width)] * batch, np.float32),
            control=_batched(faces.control, batch),
            face_mask=face_mask,
            residual_masks=masks,
            controls=tuple(ExtraControl(c.graph, _batched(c.image, batch), c.strength) for c in controls),
        )

    def __call__(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        progress=None,
        init_rgb: np.ndarray | None = None,
        control_rgb: dict[str, np.ndarray | None] | None = None,
    ) -> GenerationResult:
        """`noise` replaces the seed rule (unit noise, [N, C, H/f, W/f]); `progress(done, total)` per step.
        `init_rgb` (img2img) and `control_rgb` (extra ControlNets by name) as in `prepare`."""
        timer = StageTimer()
        run = self.prepare(face_rgb, settings, pose_rgb, noise, timer, init_rgb, control_rgb, open_early=True)
        settings = run.settings
        eps = make_noise_predictor(self.package, run.inputs, settings, timer, self.memory, run.steps)
        timer.run_record = {"batch": int(run.inputs.text.shape[0]), "steps": run.steps, "decoder": run.decoder}
        controlnets = tuple(control.graph for control in run.inputs.controls)
        latents, images = [], []
        total = run.steps * settings.num_images
        for index in range(settings.num_images):
            start_noise, rng, init = run.start(index)
            done = index * run.steps

            def step_done(step, done=done):
                if progress:
                    progress(done + step + 1, total)

            if not self.memory.reopens_denoisers:  # each step then starts with its graphs open
                timer.run("open", self._open, self._denoisers(settings, controlnets), settings, run.inputs,
                          run.opening)  # fmt: skip
            if index == 0:
                timer.run_record["seconds_to_first_step"] = _rounded(process_age())
            start = time.perf_counter()
            final = sample(settings, self.package.scheduler_config, eps, start_noise, rng, step_done, init)
            timer.seconds["denoise"] += time.perf_counter() - start
            latents.append(final)
            self.memory.close("denoising", self.package, controlnets)
            image = timer.run("decode", decode, self.package, final, run.decoder, self.memory.decode_tile)
            images.append(timer.run("watermark", watermark_image, image, "runtime") if self.watermark else image)
            self.memory.close("decoding", self.package)
        return GenerationResult(images, np.concatenate(latents), run.faces, settings, timer.summary(), self.watermark)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _batched(rgb: np.ndarray, batch: int) -> np.ndarray:
    """HxWx3 uint8 -> [batch, 3, H, W] float32 in [0, 1], as diffusers prepares control images."""
    return np.repeat((rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None], batch, axis=0)


def _openvino_cache() -> Path:
    return cache_dir("openvino")
