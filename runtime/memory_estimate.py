"""`--memory auto`: predict a run's peak RSS in every memory mode, and choose the fastest mode that fits.

The prediction replays what a run does, in order (README, "How much memory a run needs"): each graph opens when
first used (the denoisers before the first step, largest first; in modes that open them early, all at once on
top of the conditioning graphs), runs, and stays open until its mode closes it. Per graph g, at the run's size
and batch:

    weights(g)      bytes on disk (manifest) x RESIDENT[backend] (or RESIDENT_QUANTIZED): held
                    while g is open (the backend's repacked copy of the weights, and the mapped pages it keeps
                    reading)
    loading(g)      bytes on disk x LOADING[backend]: held only while g opens or compiles (a second copy the
                    backend repacks from); x LOADING_FROM_CACHE when OpenVINO loads compiled blobs
    activations(g)  the static liveness peak of g's graph file at the run's shapes (activations.py) x
                    ACTIVATIONS[backend], plus g's inputs: allocated by g's first run and kept while g is open
                    (ONNX Runtime's arena; OpenVINO's infer request), so open graphs' activations add up

    peak = process + LIBRARY[backend] + the largest sum over the replay

`process` is the RSS before any graph opened (Python, the libraries, the face models); LIBRARY is what the
backend's library and the face models' first runs add. The factors were fitted to `bench-memory` on the small
stand-in at 768x768 (bench/RESULTS.md, "Where the memory goes"); tests/test_memory_estimate.py keeps the
prediction within 30% of a measured run. Auto takes the fastest mode whose peak is within the budget: physical
memory less MARGIN (the system and the page cache need some), or `--memory-budget`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .activations import activation_bytes
from .backends import backend
from .decode import TILED_GRAPH, tile_starts, tileable
from .errors import ConfigError
from .manifest import Manifest
from .memory import MODES, MemoryPolicy, Mode, opening_order, physical_memory

GIB = 2**30
MARGIN = 0.15  # of physical memory, left to the system when auto decides
# Per backend, fitted to bench-memory on the small stand-in at 768x768 (bench/RESULTS.md, "Where the memory
# goes"): resident bytes per byte of weights on disk once a graph is open (ONNX Runtime: its prepacked copy;
# OpenVINO: the repacked copy plus the mapped pages of the IR it keeps reading); the extra per byte while it
# opens or compiles; allocated activation bytes per byte of static liveness (ONNX Runtime's memory pattern plans
# twice the liveness peak in IdentityNet, the UNet and the VAE alike; OpenVINO 0.75-1.8 by graph); and what the
# backend's library and the face models' first runs add to the process.
RESIDENT = {"onnxruntime": 1.05, "openvino": 2.2}
# OpenVINO, quantized IRs, by (precision, how their convolutions are stored: the manifest's `convolution_weights`,
# quantize/policy.py): its copy in its own layout, the mapped IR dropped once compiled. Measured with bench-memory on
# the full-size UNet and IdentityNet at 768, batch 1 (bench/RESULTS.md): int8 weights with float convolutions 1.13
# and 1.11 ("OpenVINO: convolutions' weights stay float"), int4 with float convolutions 1.28 and 1.24, calibrated
# int8 convolutions ("hybrid") 1.23 and 1.20 ("OpenVINO: hybrid int8 at full size"), int4 with calibrated int8
# convolutions ("int4-hybrid") 1.52 and 1.46 ("OpenVINO: int4 with int8 convolutions"). Quantized IRs without the record
# (older packages: int8 convolutions folded to f32 at compile time and then held twice) hold about twice their
# size: RESIDENT.
RESIDENT_QUANTIZED = {
    "openvino": {
        ("int8", "float"): 1.1,
        ("int4", "float"): 1.28,
        ("int8", "calibrated"): 1.22,
        ("int4", "calibrated"): 1.5,
    }
}
LOADING = {"onnxruntime": 0.05, "openvino": 0.1}
LOADING_FROM_CACHE = {"onnxruntime": 0.05, "openvino": 1.0}  # OpenVINO reading a compiled blob: +0.9 GiB / 0.93
ACTIVATIONS = {"onnxruntime": 2.0, "openvino": 1.3}
# without ONNX Runtime's memory pattern (Mode.planned_activations False): the full int8 UNet at 768x768, batch 2,
# allocated 1.69 GiB against 2.80 with it, i.e. 1.2x its liveness peak
UNPLANNED_ACTIVATIONS = {**ACTIVATIONS, "onnxruntime": 1.2}  # OpenVINO has no such pattern
LIBRARY = {"onnxruntime": 0.1 * GIB, "openvino": 0.12 * GIB}  # fitted on the tiny stand-in, where they dominate
_CONDITIONING = ("image_proj", "text_encoder", "text_encoder_2")  # in the order a run opens them
_DENOISERS = ("identitynet", "unet")


@dataclass(frozen=True)
class RunShape:
    height: int
    width: int
    batch: int  # 2 with CFG
    decoder: str = TILED_GRAPH  # the decoder graph (manifest.DECODER_GRAPHS)


@dataclass(frozen=True)
class MemoryPlan:
    """What auto predicted (bytes) and chose; printed by `generate --json` and kept in bench results."""

    mode: str  # the mode the run follows (chosen by auto, or given)
    budget: int
    process: int
    predicted: dict[str, int]  # mode -> predicted peak of the whole process
    fits: bool  # False: not even the leanest mode fits; it runs anyway

    def to_dict(self) -> dict:
        gib = lambda value: round(value / GIB, 3)  # noqa: E731
        return {"chosen": self.mode, "budget_gib": gib(self.budget), "process_gib": gib(self.process),
                "predicted_peak_gib": {m: gib(v) for m, v in self.predicted.items()}, "fits": self.fits}  # fmt: skip


class MemoryModel:
    """The inputs of the prediction for one package and backend: weights on disk, and activations on demand."""

    def __init__(self, manifest: Manifest, backend_name: str, cache: bool = False):
        """`cache`: OpenVINO's compiled-model cache is on (a warm start loads blobs, with a higher peak)."""
        self.manifest, self.backend = manifest, backend_name
        self._loading = (LOADING_FROM_CACHE if cache else LOADING)[backend_name]
        self.format = backend(backend_name).format
        self.disk = {name: size for name, size in manifest.graph_bytes(self.format).items() if size}
        self.resident = {name: self._resident(name) for name in self.disk}

    def _resident(self, graph: str) -> float:
        info = self.manifest.graph(graph)
        record = info.quantization or {}
        stored = record.get("convolution_weights", {}).get(self.format)
        if stored is None and record.get("action") in ("hybrid", "full"):
            stored = "calibrated"  # packages quantized before the record: calibrated convolutions all the same
        return RESIDENT_QUANTIZED.get(self.backend, {}).get((info.precision, stored), RESIDENT[self.backend])

    def weights(self, graph: str) -> int:
        return int(self.disk.get(graph, 0) * self.resident.get(graph, 0.0))

    def loading(self, graph: str) -> int:
        return int(self.disk.get(graph, 0) * self._loading)

    def activations(self, graph: str, height: int, width: int, batch: int = 1, planned: bool = True) -> int:
        """Activations + inputs of one call of `graph` on `height` x `width` pixels (`planned`: Mode's
        planned_activations)."""
        shapes = self.manifest.input_shapes(graph, height, width, batch)
        inputs = sum(4 * _count(shape) for shape in shapes.values())
        static = activation_bytes(self.manifest.graph(graph), self.manifest.root, self.format, shapes)
        factor = (ACTIVATIONS if planned else UNPLANNED_ACTIVATIONS)[self.backend]
        return int(static * factor) + inputs

    def _decode_size(self, mode: Mode, shape: RunShape) -> tuple[int, int]:
        """The pixels one decoder call sees: the image, or one tile of it."""
        if not mode.decode_tile or not tileable(self.manifest, shape.decoder):
            return shape.height, shape.width
        scale = self.manifest.architecture.vae_scale_factor
        latent = self.manifest.architecture.latent_size(shape.height, shape.width)
        return tuple(tile_starts(side, mode.decode_tile)[1] * scale for side in latent)

    def peak(self, mode: Mode, shape: RunShape, process: int) -> int:
        """The predicted peak RSS of the whole process for one image in `mode` (replay: module docstring)."""
        batch = 1 if mode.cfg_split else shape.batch
        calls = [(g, shape.height, shape.width, 1, ()) for g in _CONDITIONING[:-1]]
        calls.append((_CONDITIONING[-1], shape.height, shape.width, 1, ("conditioning",)))
        highest = 0
        held: dict[str, int] = {}
        if mode.opens_early:  # every denoiser opens at once, on top of every conditioning graph run
            held = {graph: self.weights(graph) + self.activations(graph, shape.height, shape.width, 1,
                                                                  mode.planned_activations)
                    for graph in _CONDITIONING if graph in self.disk}  # fmt: skip
            held |= {graph: self.weights(graph) for graph in _DENOISERS if graph in self.disk}
            highest = sum(held.values()) + sum(self.loading(graph) for graph in _DENOISERS)
        elif not MemoryPolicy(mode.name).reopens_denoisers:  # they open, largest first, before the first step
            calls += [(graph, None, None, batch, ()) for graph in opening_order(_DENOISERS, self.disk)]
        for step in range(2):  # two steps: what reopens every step shows
            for graph in _DENOISERS:
                last = step == 1 and graph == "unet"
                calls.append((graph, shape.height, shape.width, batch, (graph, "denoising") if last else (graph,)))
        calls.append((shape.decoder, *self._decode_size(mode, shape), 1, ("decoding",)))
        for graph, height, width, graph_batch, stages in calls:
            if graph in self.disk:
                if graph not in held:  # opening: its weights, plus a transient copy
                    highest = max(highest, sum(held.values()) + self.weights(graph) + self.loading(graph))
                    held[graph] = self.weights(graph)
                if height is None:  # opened only
                    continue
                activations = self.activations(graph, height, width, graph_batch, mode.planned_activations)
                running = self.weights(graph) + activations
                highest = max(highest, sum(held.values()) - held[graph] + running)
                held[graph] = max(held[graph], running)  # activations stay allocated while the graph is open
            for stage in stages:
                for closed in mode.closes_after.get(stage, ()):
                    held.pop(closed, None)
        return process + LIBRARY[self.backend] + highest


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def budget_bytes(budget: int | None = None) -> int | None:
    """`budget` as given, else physical memory less MARGIN; None where the system does not say."""
    if budget is not None:
        return budget
    physical = physical_memory()
    return int(physical * (1 - MARGIN)) if physical is not None else None


def plan(model: MemoryModel, shape: RunShape, process: int, budget: int | None = None, mode: str = "auto"
         ) -> MemoryPolicy:  # fmt: skip
    """`mode`, or under "auto" the fastest mode whose predicted peak fits the budget (else the leanest), with
    the prediction of every mode."""
    budget = budget_bytes(budget)
    predicted = {name: model.peak(entry, shape, process) for name, entry in MODES.items()}
    policy = MemoryPolicy.choose(mode, predicted, budget)
    fits = budget is not None and predicted[policy.mode] <= budget
    return MemoryPolicy(policy.mode, MemoryPlan(policy.mode, budget or 0, process, predicted, fits))


def parse_budget(value: float | None) -> int | None:
    if value is None:
        return None
    if value <= 0:
        raise ConfigError(f"--memory-budget must be a positive number of GiB, got {value}")
    return int(value * GIB)
