"""What is measured: every execution path of the cohort and of the teacher, as timed cases.

In-process cases share one intra-op thread count per group: the fused cohort at every k (and
bf16 where the CPU has it natively), the cohort on ONNX Runtime (fp32 at every k, int8 at 1
and N), the one-by-one reference, and the teacher on Hugging Face eager and ONNX Runtime. The
threaded cohort runs one Python thread per student at one thread each. The multi-process cases
put worker pools of different layouts on the same cores.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from shoal.bench.offline.flops import cohort_flops, teacher_flops
from shoal.bench.offline.inputs import model_args
from shoal.bench.offline.systems import ort_session, threaded_runner
from shoal.bench.offline.timing import Case, System
from shoal.models.cohort import ShoalModel
from shoal.models.teacher import input_names
from shoal.serve.runtime import LocalRunner, RuntimeConfig, WorkerPool
from shoal.serve.runtime.allocation import workers_for

# (case name, runner, the k it is timed at)
_Runners = list[tuple[str, LocalRunner, list[int]]]


def in_process_cases(
    model: ShoalModel,
    teacher: Any,
    teacher_graphs: list[tuple[str, Path]],
    t: int,
    bf16: bool,
    length: int,
    large: int,
) -> list[Case]:
    """The cohort's runners and the teachers at ``t`` intra-op threads, batch 1 then ``large``.

    ``teacher_graphs`` are (case name, ONNX file) of the teacher; when there are any, ONNX
    Runtime is on and the cohort runs on it too."""
    sessions = [(name, ort_session(path, t)) for name, path in teacher_graphs]
    runners = _runners(model, bf16, onnx=bool(teacher_graphs))
    cases: list[Case] = []
    for b in (1, large):
        cases += _cohort_cases(model, runners, b, t, length)
        cases += _teacher_cases(teacher, sessions, b, t, length)
    return cases


def _runners(model: ShoalModel, bf16: bool, onnx: bool) -> _Runners:
    n = model.n_students
    runners: _Runners = [(System.COHORT_FUSED, LocalRunner(model), list(range(1, n + 1)))]
    if bf16:
        runners.append(
            (System.COHORT_FUSED_BF16, LocalRunner(model, dtype="bfloat16"), sorted({1, n}))
        )
    if onnx:
        runners.append(
            (
                System.COHORT_ORT,
                LocalRunner(model, backend="onnxruntime"),
                list(range(1, n + 1)),
            )
        )
        runners.append(
            (
                System.COHORT_ORT_INT8,
                LocalRunner(model, backend="onnxruntime", dtype="int8"),
                sorted({1, n}),
            )
        )
    return runners


def _cohort_cases(model: ShoalModel, runners: _Runners, b: int, t: int, length: int) -> list[Case]:
    """Each runner at each of its k, then the one-by-one reference with every student."""
    n, ccfg = model.n_students, model.config
    cases = [
        Case(
            name,
            b,
            k,
            t,
            cohort_flops(ccfg, k, b, length),
            lambda x, k=k, r=runner: r.run(*model_args(x), k),
        )
        for name, runner, ks in runners
        for k in ks
    ]
    cases.append(
        Case(
            System.COHORT_ONE_BY_ONE,
            b,
            n,
            t,
            cohort_flops(ccfg, n, b, length, fused=False),
            lambda x: model(*model_args(x), n).logits,
        )
    )
    return cases


def _teacher_cases(
    teacher: Any, sessions: list[tuple[str, Any]], b: int, t: int, length: int
) -> list[Case]:
    """The teacher as a user runs it (Hugging Face eager), then on each ONNX Runtime session."""
    tcfg, names = teacher.config, input_names(teacher)
    cases = [
        Case(
            System.TEACHER_HF,
            b,
            None,
            t,
            teacher_flops(tcfg, b, length),
            lambda x: teacher(**{n: x[n] for n in names}).logits,
        )
    ]
    cases.extend(
        Case(
            name,
            b,
            None,
            t,
            teacher_flops(tcfg, b, length),
            lambda x, s=session, feeds=[a.name for a in session.get_inputs()]: s.run(
                None, {n: x[n].numpy() for n in feeds}
            ),
        )
        for name, session in sessions
    )
    return cases


def threaded_cases(
    model: ShoalModel, tp: ThreadPoolExecutor, length: int, large: int
) -> list[Case]:
    """The full cohort with one Python thread per student (of ``tp``), batch 1 and ``large``."""
    n = model.n_students
    run = threaded_runner(LocalRunner(model), n, tp)
    return [
        Case(
            System.COHORT_THREADED,
            b,
            n,
            1,
            cohort_flops(model.config, n, b, length),
            run,
            {"python_threads": n},
        )
        for b in (1, large)
    ]


def _layouts(cores: int) -> list[tuple[int, int, int | None, str]]:
    """(workers, threads per worker, OpenMP spin count, backend) of each pool measured."""
    layouts: list[tuple[int, int, int | None, str]] = [
        (1, cores, None, "torch"),
        (cores, 1, None, "torch"),
        (cores, 1, None, "onnxruntime"),
    ]
    if cores == 1:
        return [(1, 1, None, "torch")]
    if "GOMP_SPINCOUNT" not in os.environ:
        layouts.insert(1, (1, cores, 1000, "torch"))
    return layouts


def multiprocess_cases(
    stack: contextlib.ExitStack, folder: str, ccfg: Any, n: int, length: int, large: int, cores: int
) -> list[Case]:
    """Worker pools on the same cores: one worker with every core (OpenMP's default spinning,
    and a short spin) against one single-threaded worker per core (students side by side, on
    torch and on ONNX Runtime). At batch 1 each pool runs one student and the full cohort, so
    the time a layout adds per student is measured where the students run in parallel."""
    cases = []
    for workers, threads, spin, backend in _layouts(cores):
        config = RuntimeConfig(
            workers=workers,
            threads=threads,
            omp_spincount=spin,
            backend=backend,
            health_interval_s=0,
        )
        pool = stack.enter_context(WorkerPool(folder, config))
        name = (
            f"cohort {workers} proc x {threads} thr"
            + (f" spin {spin}" if spin else "")
            + (" ONNX Runtime" if backend == "onnxruntime" else "")
        )
        for b, k in ((1, 1), (1, n), (large, n)):
            seconds: list[float] = []

            def run(
                x: dict[str, torch.Tensor],
                pool: WorkerPool = pool,
                k: int = k,
                seconds: list[float] = seconds,
            ) -> torch.Tensor:
                out = pool.run(*model_args(x), k)
                seconds.append(max(pool.last_worker_seconds.values()))
                return out

            extra = {
                "workers": workers,
                "omp_spincount": spin,
                "backend": backend,
                "cores_used": threads * len(workers_for(k, pool.allocation)),
                "worker_seconds": seconds,
            }
            cases.append(Case(name, b, k, threads, cohort_flops(ccfg, k, b, length), run, extra))
    return cases
