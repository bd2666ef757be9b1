"""The InstantID pipeline on a model package: photo + prompt -> portrait, with no PyTorch.

    pipe = InstantIDPipeline.load("pkg", backend="openvino", threads=2)   # once
    result = pipe(face_rgb, GenerationSettings(prompt="..."))             # many times
    result.images[0]                                                      # HxWx3 uint8

Stages: face analysis and the control image; face tokens (uncond tokens come precomputed in the package);
text conditioning (cached per prompt); the sampler loop over IdentityNet + UNet; VAE decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .decode import decode
from .denoise import Conditioning, StageTimer, make_denoiser
from .errors import ConfigError, FaceModelError
from .face import FaceAnalyzer, FaceConditioning, face_conditioning
from .images import official_size
from .memory import MEMORY_MODES
from .package import ModelPackage, default_cache_dir
from .provenance import watermark_image
from .sampling import sample
from .session import SessionOptions
from .settings import GenerationSettings, time_ids
from .text import TextEncoder, check_finite


@dataclass
class GenerationResult:
    images: list[np.ndarray]  # HxWx3 uint8 each
    latents: np.ndarray  # final latents [N, 4, H/8, W/8], before decoding
    conditioning: FaceConditioning
    settings: GenerationSettings  # with the width and height actually used
    timings: dict = field(default_factory=dict)
    watermarked: bool = False  # images carry the invisible watermark (provenance/)


def choose_memory_mode(package: ModelPackage) -> str:
    """`auto`: from the denoiser graphs' weight bytes against physical memory.

    Loaded weights take about their file size (more while a backend repacks them); activations, the other
    graphs and the process come on top.
    """
    import os

    from .session import FORMAT_OF

    fmt = FORMAT_OF[package.options.backend]
    sizes = {name: sum(f["bytes"] for f in graph.files.get(fmt, [])) for name, graph in package.manifest.graphs.items()}
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "low"
    denoiser = sizes.get("unet", 0) + sizes.get("identitynet", 0)
    if denoiser > 0.45 * memory:
        return "minimal"
    return "low" if sum(sizes.values()) > 0.45 * memory else "normal"


class InstantIDPipeline:
    watermark = True  # result images carry the invisible watermark; `pipe.watermark = False` opts out

    def __init__(self, package: ModelPackage, analyzer: FaceAnalyzer, memory: str = "normal"):
        """`memory`: "normal" keeps every graph open; "low" closes each graph once its stage is done (text
        encoders and image adapter after conditioning, the VAE after decoding), so the peak is the denoiser's
        two graphs; "minimal" also keeps only one of IdentityNet and the UNet open at a time, reopening them
        every step (slow, for machines that cannot hold both); "auto" chooses from sizes and physical memory.
        """
        if memory not in MEMORY_MODES:
            raise ConfigError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        self.package, self.analyzer = package, analyzer
        self.memory = choose_memory_mode(package) if memory == "auto" else memory
        self.text = TextEncoder(package)
        expected = package.architecture["embedding_dim"]
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
        cache_dir = (cache_dir or default_cache_dir()) if cache else None
        options = SessionOptions(backend, threads, cache_dir, precision_hint)
        return cls(ModelPackage(package, options), FaceAnalyzer(face_models), memory)

    def _noise(self, settings: GenerationSettings, given: np.ndarray | None, height: int, width: int) -> np.ndarray:
        expected = (settings.num_images, 4, height // 8, width // 8)
        if given is None:
            from .noise import initial_noise

            return initial_noise(settings.seed, height, width, settings.num_images)
        given = np.asarray(given, dtype=np.float32)
        given = given.reshape((1, *given.shape)) if given.ndim == 3 else given
        if given.shape != expected:
            raise ConfigError(
                f"given latents have shape {given.shape}; {width}x{height} x {settings.num_images} needs {expected}"
            )
        if not np.isfinite(given).all():
            raise ConfigError("given latents contain NaN or infinite values")
        return given

    def prepare(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        timer: StageTimer | None = None,
    ) -> tuple[GenerationSettings, FaceConditioning, Conditioning, np.ndarray]:
        """Everything before the loop: resolved settings, face conditioning, the denoiser's inputs, unit noise."""
        settings.validate()
        timer = timer or StageTimer()
        canvas = pose_rgb if pose_rgb is not None else face_rgb
        photo_size = official_size(canvas.shape[1], canvas.shape[0])[1]
        width, height = self.package.output_size(settings.width, settings.height, photo_size)
        settings = replace(settings, width=width, height=height).validate()
        cond = timer.run("face", face_conditioning, self.analyzer, face_rgb, width, height, pose_rgb)
        noise = self._noise(settings, noise, height, width)

        embedding = cond.face.embedding.reshape(1, 1, -1).astype(np.float32)
        tokens = timer.run("image_proj", self.package.session("image_proj").run, {"image_embeds": embedding})
        tokens = check_finite("image_proj", tokens["image_tokens"])
        text, pooled = timer.run(
            "text", self.text.conditioning, settings.prompt, settings.negative_prompt, settings.cfg
        )
        batch = 2 if settings.cfg else 1
        if settings.cfg:
            tokens = np.concatenate([self.package.uncond_image_tokens, tokens])
        control = np.repeat((cond.control.astype(np.float32) / 255).transpose(2, 0, 1)[None], batch, axis=0)
        conditioning = Conditioning(
            text=text,
            pooled=pooled,
            image_tokens=tokens,
            time_ids=np.array([time_ids(height, width)] * batch, np.float32),
            control=control,
        )
        if self.memory != "normal":
            self.package.release("text_encoder", "text_encoder_2", "image_proj")
        return settings, cond, conditioning, noise

    def __call__(
        self,
        face_rgb: np.ndarray,
        settings: GenerationSettings,
        pose_rgb: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        progress=None,
    ) -> GenerationResult:
        """`noise` replaces the seed rule (unit noise, [N, 4, H/8, W/8]); `progress(done, total)` per step."""
        timer = StageTimer()
        settings, cond, conditioning, noise = self.prepare(face_rgb, settings, pose_rgb, noise, timer)
        denoiser = make_denoiser(self.package, conditioning, settings, timer, one_graph=self.memory == "minimal")

        latents, images = [], []
        total = settings.steps * settings.num_images
        for index in range(settings.num_images):
            rng = np.random.default_rng(settings.seed + index)
            rng.standard_normal(noise.shape[1:], dtype=np.float32)  # the initial noise's draw: steps come after it
            done = index * settings.steps

            def step_done(step, done=done):
                if progress:
                    progress(done + step + 1, total)

            start = time.perf_counter()
            final = sample(settings, self.package.scheduler_config, denoiser, noise[index : index + 1], rng, step_done)
            timer.seconds["denoise"] += time.perf_counter() - start
            latents.append(final)
            if self.memory != "normal":
                self.package.release("identitynet", "unet")
            image = timer.run("decode", decode, self.package, final)
            images.append(timer.run("watermark", watermark_image, image, "runtime") if self.watermark else image)
            if self.memory != "normal":
                self.package.release("vae_decoder")
        timings = {name: round(seconds, 4) for name, seconds in timer.seconds.items()}
        timings["calls"] = dict(timer.calls)
        return GenerationResult(images, np.concatenate(latents), cond, settings, timings, self.watermark)
