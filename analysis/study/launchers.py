"""Where the study's jobs run: the local pool (default) or submitit (SLURM, or its local executor for tests).

A launcher takes a `Job` and returns a `concurrent.futures.Future` whose result is the job's (or whose exception
is the job's failure); the runner never starts more than `slots` at once.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from analysis.errors import UsageError
from analysis.study.config import LauncherSpec

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Job:
    """One unit of work: `fn(*args, **kwargs)` for `target` in `step`.

    kind: `process` (training, capture: a spawned worker), `notebook` (`jobs.execute_notebook`: a warm kernel)
        or `thread` (a plain call in a worker thread).
    follow: the jobs that become ready once this one is done (or found done).
    done: already finished (skipped, its `follow` still runs).
    """

    step: str
    target: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    kind: str = "process"
    follow: Callable[[], list["Job"]] | None = None
    done: bool = False


def describe(exc: BaseException) -> str:
    """One line naming a job's failure (a notebook's own error name and value where papermill gives them)."""
    if isinstance(exc, JobFailed):  # described where it ran
        return " ".join(str(exc).split())
    detail = getattr(exc, "ename", type(exc).__name__) + ": " + str(getattr(exc, "evalue", exc))
    return " ".join(detail.split())


class JobFailed(Exception):
    """A job that failed elsewhere (a submitit job), with its one-line description."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def share_cores(workers: int) -> Iterator[None]:
    """Within the block, child processes (spawned workers, notebook kernels) each get cores // workers
    threads for torch and BLAS. Without it every child's BLAS pool spins over all cores:
    two probing kernels on 2 cores ran 35x slower than one (643 s against 19 s)."""
    share = str(max(1, cores() // max(1, workers)))
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update(dict.fromkeys(THREAD_VARS, share))
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


class LocalLauncher:
    """`workers` spawned processes for training and capture (kept warm across jobs), `workers` warm notebook
    kernels (`kernels.KernelPool`)."""

    def __init__(self, workers: int, timeout: float | None = None):
        self.slots = workers
        self.timeout = timeout
        self._processes: ProcessPoolExecutor | None = None
        self._threads = ThreadPoolExecutor(workers)
        self._kernels = None

    def submit(self, job: Job) -> Future:
        if job.kind == "process":
            if self._processes is None:
                self._processes = ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"))
            try:
                return self._processes.submit(job.fn, *job.args, **job.kwargs)
            except BrokenProcessPool:  # a worker died (killed, out of memory): its job failed; go on with a new pool
                self._processes.shutdown(wait=False)
                self._processes = ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"))
                return self._processes.submit(job.fn, *job.args, **job.kwargs)
        if job.kind == "notebook":
            return self._threads.submit(self._in_kernel, job)
        return self._threads.submit(job.fn, *job.args, **job.kwargs)

    def _in_kernel(self, job: Job) -> Any:
        if self._kernels is None:
            from analysis.study.kernels import KernelPool

            self._kernels = KernelPool()
        with self._kernels.kernel() as kernel:
            return job.fn(*job.args, kernel=kernel, timeout=self.timeout, **job.kwargs)

    @property
    def kernels_started(self) -> int:
        return 0 if self._kernels is None else self._kernels.started

    def close(self) -> None:
        if self._kernels is not None:
            self._kernels.close()
        if self._processes is not None:
            self._processes.shutdown()
        self._threads.shutdown()


def run_remote(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """A job as submitit runs it: its failure comes back as a one-line description (its traceback is in the
    job's log), not as a pickled exception."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - described for the study's report
        import traceback

        traceback.print_exc()
        return {"error": describe(exc)}
    return {}


class SubmititLauncher:
    """Each job is a submitit job: on SLURM (`kind: submitit`, `slurm:` its parameters) or a local subprocess
    (`kind: submitit-local`). Notebooks run in a fresh kernel inside their job."""

    def __init__(self, spec: LauncherSpec, folder: Path, workers: int, timeout: float | None = None):
        import submitit

        self.slots = spec.max_jobs or workers
        self.timeout = timeout
        if spec.kind == "submitit-local":
            self.executor = submitit.LocalExecutor(folder=str(folder))
        else:
            try:
                self.executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
            except RuntimeError as err:  # no srun here
                raise UsageError(f"launcher kind submitit needs a SLURM cluster ({err}); on one machine use kind "
                                 f"local, or submitit-local to try the submitit path") from None
            generic = submitit.AutoExecutor._valid_parameters()
            try:
                self.executor.update_parameters(**{k if k in generic or k.startswith("slurm_") else f"slurm_{k}": v
                                                   for k, v in spec.slurm.items()})
            except (NameError, ValueError, TypeError) as err:  # submitit names an unknown key with NameError
                raise UsageError(f"launcher.slurm: {str(err).splitlines()[0]}") from None
        self._threads = ThreadPoolExecutor(self.slots)  # one thread waits on each job in flight

    def submit(self, job: Job) -> Future:
        kwargs = dict(job.kwargs, timeout=self.timeout) if job.kind == "notebook" else job.kwargs
        self.executor.update_parameters(name=f"{job.step}-{job.target}".replace("/", "-"))
        submitted = self.executor.submit(run_remote, job.fn, job.args, kwargs)
        return self._threads.submit(self._wait, submitted)

    @staticmethod
    def _wait(submitted) -> None:
        result = submitted.result()
        if result.get("error"):
            raise JobFailed(f"{result['error']} (job {submitted.job_id}; log {submitted.paths.stderr})")

    def close(self) -> None:
        self._threads.shutdown()


def make_launcher(spec: LauncherSpec, folder: Path, workers: int, *, timeout: float | None = None):
    if spec.kind == "local":
        return LocalLauncher(workers, timeout)
    return SubmititLauncher(spec, Path(spec.folder) if spec.folder else folder, workers, timeout)
