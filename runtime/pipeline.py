"""The InstantID pipeline on a model package: photo + prompt -> portrait, with no PyTorch.

    pipe = InstantIDPipeline.load("pkg", backend="openvino", threads=2)   # once
    result = pipe(face_rgb, GenerationSettings(prompt="..."))             # many times
    result.images[0]                                                      # HxWx3 uint8

Stages: face analysis and the control image (`FaceConditioning`); face tokens (uncond tokens come precomputed in
the package); text embeddings (cached per prompt); together the noise predictor's `PredictorInputs`; then per
image the sampler loop over IdentityNet + UNet, the decode (the VAE, or TAESD-XL with `decoder="tiny"`) and the
invisible watermark (provenance/; opt out with `pipe.watermark = False`). The memory policy (`pipe.memory`)
closes graphs between stages. `prepare` runs everything before the loop, for callers that time stages apart
(bench).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends import backend, cache_dir
from .decode import decode
from .errors import FaceModelError, check_finite
from .face import FaceAnalyzer, FaceConditioning, face_conditioning
from .images import official_size
from .memory import MemoryPolicy
from .noise import check_given_noise, image_rng
from .noise_prediction import PredictorInputs, make_noise_predictor
from .package import ModelPackage
from .provenance import watermark_image
from .sampling import sample, schedule_for
from .session import SessionOptions
from .settings import GenerationSettings, time_ids
from .text import TextEncoder
from .timing import StageTimer


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

    def start(self, index: int) -> tuple[np.ndarray, np.random.Generator]:
        """Image `index`'s starting unit noise [1, C, h, w] and its step generator (noise.image_rng)."""
        noise, rng = image_rng(self.settings.seed, index, self.latent_shape)
        if self.given_noise is not None:
            noise = self.given_noise[index]
        return noise[None], rng


class InstantIDPipeline:
    watermark = True  # result images carry the invisible watermark; `pipe.watermark = False` opts out

    def __init__(self, package: ModelPackage, analyzer: FaceAnalyzer, memory: str = "normal"):
        """`memory`: a mode of runtime.memory.MEMORY_MODES ("auto" decides from the graphs' sizes and RAM)."""
        graph_bytes = package.manifest.graph_bytes(backend(package.options.backend).format)
        self.memory = MemoryPolicy.choose(memory, graph_bytes)
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
    ) -> InstantIDPipeline:
        """`cache=False` keeps OpenVINO from writing compiled blobs (as large as the weights) to disk."""
        cache_dir = (cache_dir or _openvino_cache()) if cache else None
        options = SessionOptions(backend, threads, cache_dir, precision_hint)
        return cls(ModelPackage(package, options), FaceAnalyzer(face_models), memory)

    def prepare(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        timer: StageTimer | None = None,
    ) -> PreparedRun:
        """Face analysis, face tokens and text embeddings, batched for the noise predictor; `noise` checked."""
        settings.validate()
        decoder = self.package.manifest.decoder_graph(settings.decoder)  # what the package lacks fails first
        schedule_for(settings, self.package.scheduler_config)
        timer = timer or StageTimer()
        canvas = pose_rgb if pose_rgb is not None else face_rgb
        photo_size = official_size(canvas.shape[1], canvas.shape[0])[1]
        width, height = self.package.output_size(settings.width, settings.height, photo_size)
        settings = replace(settings, width=width, height=height).validate()
        faces = timer.run("face", face_conditioning, self.analyzer, face_rgb, width, height, pose_rgb)
        shape = self.package.manifest.architecture.latent_shape(height, width)
        if noise is not None:
            noise = check_given_noise(noise, (settings.num_images, *shape), f"{width}x{height} x {settings.num_images}")
        inputs = self._predictor_inputs(settings, faces, timer)
        self.memory.close("conditioning", self.package)
        return PreparedRun(settings, faces, inputs, shape, noise, decoder)

    def _predictor_inputs(self, settings: GenerationSettings, faces: FaceConditioning, timer) -> PredictorInputs:
        embedding = faces.face.embedding.reshape(1, 1, -1).astype(np.float32)
        tokens = timer.run("image_proj", self.package.session("image_proj").run, {"image_embeds": embedding})
        tokens = check_finite("image_proj", tokens["image_tokens"])
        text = timer.run("text", self.text.embed, settings.prompt, settings.negative_prompt, settings.cfg)
        batch = 2 if settings.cfg else 1
        if settings.cfg:
            tokens = np.concatenate([self.package.uncond_image_tokens, tokens])
        control = np.repeat((faces.control.astype(np.float32) / 255).transpose(2, 0, 1)[None], batch, axis=0)
        return PredictorInputs(
            text=text.hidden,
            pooled=text.pooled,
            image_tokens=tokens,
            time_ids=np.array([time_ids(settings.height, settings.width)] * batch, np.float32),
            control=control,
        )

    def __call__(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        progress=None,
    ) -> GenerationResult:
        """`noise` replaces the seed rule (unit noise, [N, C, H/f, W/f]); `progress(done, total)` per step."""
        timer = StageTimer()
        run = self.prepare(face_rgb, settings, pose_rgb, noise, timer)
        settings = run.settings
        eps = make_noise_predictor(self.package, run.inputs, settings, timer, self.memory)
        timer.run_record = {"batch": int(run.inputs.text.shape[0]), "steps": settings.steps, "decoder": run.decoder}
        latents, images = [], []
        total = settings.steps * settings.num_images
        for index in range(settings.num_images):
            start_noise, rng = run.start(index)
            done = index * settings.steps

            def step_done(step, done=done):
                if progress:
                    progress(done + step + 1, total)

            start = time.perf_counter()
            final = sample(settings, self.package.scheduler_config, eps, start_noise, rng, step_done)
            timer.seconds["denoise"] += time.perf_counter() - start
            latents.append(final)
            self.memory.close("denoising", self.package)
            image = timer.run("decode", decode, self.package, final, run.decoder)
            images.append(timer.run("watermark", watermark_image, image, "runtime") if self.watermark else image)
            self.memory.close("decoding", self.package)
        return GenerationResult(images, np.concatenate(latents), run.faces, settings, timer.summary(), self.watermark)


def _openvino_cache() -> Path:
    return cache_dir("openvino")
