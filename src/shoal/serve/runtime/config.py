"""The runtime's layout: device, worker processes, threads, precision. No torch here."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

from shoal.errors import ConfigError

SERVING_ENVIRONMENT = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
"""Defaults ``Runtime.start`` sets before its first forward pass and before it starts any
worker process (the environment's own values win). oneDNN keeps one primitive per tensor
shape, up to 1,024 by default; a server meets a new shape with every new (inputs, padded
length) batch, so that cache keeps adding memory while new shapes arrive, for minutes, and
buys no measurable speed (docs/results/serve.md, "Memory under new batch shapes")."""


def set_serving_environment(environ: MutableMapping[str, str]) -> None:
    """Put ``SERVING_ENVIRONMENT``'s defaults into ``environ`` where it has no value. Worker
    processes started afterwards inherit them."""
    for name, value in SERVING_ENVIRONMENT.items():
        environ.setdefault(name, value)


DTYPES = ("float32", "bfloat16", "int8")
BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str, device: str, dtype: str) -> None:
    """Refuse an unknown backend and the combinations that do not run: ONNX Runtime runs
    float32 and int8 on the CPU; int8 (dynamic quantization) runs only there."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is unknown; use one of {BACKENDS}")
    if backend == "onnxruntime" and (device != "cpu" or dtype not in ("float32", "int8")):
        raise ConfigError(
            f"backend='onnxruntime' runs float32 or int8 on the CPU, not dtype={dtype!r} on "
            f"device={device!r}; use backend='torch' for GPUs and bfloat16"
        )
    if backend == "torch" and dtype == "int8":
        raise ConfigError(
            "dtype='int8' (dynamically quantized students) runs on backend='onnxruntime' "
            "only; add --backend onnxruntime, or use float32 / bfloat16 with torch"
        )


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How the cohort is laid out on this machine."""

    device: str = "cpu"
    """'cpu', 'cuda' (every visible GPU) or 'cuda:N' (one GPU)."""
    workers: int = 0
    """Worker processes. 0 runs the cohort in the calling process (one device, fused)."""
    threads: int | None = None
    """Intra-op threads per worker. On CPU each worker is pinned to this many cores; None
    splits the available cores evenly between workers. With ``workers=0``, None leaves the
    process's torch thread count alone."""
    dtype: str = "float32"
    """'float32'; 'bfloat16' for the students' matmuls (GPUs, and CPUs with native bf16); or
    'int8' with backend='onnxruntime' (weights quantized to int8, activations per batch at
    run time). Embeddings, the sum over students and the head stay float32."""
    backend: str = "torch"
    """What runs the students: 'torch' (the fused eager path, CPU and CUDA) or 'onnxruntime'
    (each student an ONNX graph with prepacked weights; CPU and float32 only; faster at small
    batches, see docs/results/kernels.md)."""
    replicate: bool = False
    """False: spread the students over the workers (lowest latency per batch). True: each
    worker holds as many students as memory allows, copies of the cohort serve batches side by
    side (throughput)."""
    max_students_per_worker: int | None = None
    """Memory limit per worker, in students; None means no limit."""
    procs_per_gpu: int = 1
    """Worker processes sharing one GPU (MPS-style); with device='cuda' worker w runs on GPU
    ``w // procs_per_gpu``."""
    request_timeout_s: float = 120.0
    """A worker that has not answered a batch within this many seconds is treated as crashed."""
    startup_timeout_s: float = 300.0
    """Seconds a worker may take to load the cohort and report ready."""
    retries: int = 1
    """Times a batch is retried on a restarted worker after its worker crashed, before the
    batch fails with ``WorkerCrashed``."""
    omp_spincount: int | None = None
    """``GOMP_SPINCOUNT`` of the worker processes: how long an idle OpenMP thread busy-waits
    before sleeping. None keeps the library default (lowest latency on dedicated cores); a
    small value such as 1000 stops multi-threaded workers from collapsing when their cores are
    shared with other busy processes (measured: 30x faster on a loaded 2-core host)."""
    health_interval_s: float = 1.0
    """Seconds between health checks of idle workers (a dead one is restarted); 0 disables the
    background monitor, crashes are then found when a batch is dispatched."""

    def __post_init__(self) -> None:
        if self.device != "cpu" and not (self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is unknown; use 'cpu', 'cuda' or 'cuda:N'")
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers} must be >= 0 (0 runs in-process)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be >= 1 or None")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is unknown; use one of {DTYPES}")
        check_backend(self.backend, self.device, self.dtype)
        if self.procs_per_gpu < 1:
            raise ConfigError(f"procs_per_gpu={self.procs_per_gpu} must be >= 1")
        if self.max_students_per_worker is not None and self.max_students_per_worker < 1:
            raise ConfigError(
                f"max_students_per_worker={self.max_students_per_worker} must be >= 1 or None"
            )
        for name in ("request_timeout_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.retries < 0:
            raise ConfigError(f"retries={self.retries} must be >= 0")
        if self.omp_spincount is not None and self.omp_spincount < 0:
            raise ConfigError(f"omp_spincount={self.omp_spincount} must be >= 0 or None")
        if self.health_interval_s < 0:
            raise ConfigError(f"health_interval_s={self.health_interval_s} must be >= 0")
