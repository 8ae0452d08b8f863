"""The study runner: schedules the jobs `Plan` lists on a launcher, records outcomes and timings, writes the
report.

Steps are pipelined: a run's capture starts when its training ends, its notebooks when its capture ends, so the
tail of the training step does not leave a worker idle; the summaries start when everything else has finished.
A ready job of an earlier step goes first (training is the longest). Every step is idempotent: a second run
trains, captures and executes nothing that already finished. A failing job is reported and the study starts no
new job (the running ones finish), writes the report and exits 1; with `keep_going` it runs everything that
does not depend on the failed job and still exits 1 at the end.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

from tqdm.auto import tqdm

from analysis.io import read_json, write_json
from analysis.report import Outcome, RunLog, write_report
from analysis.study import jobs as job_bodies
from analysis.study.config import StudyConfig
from analysis.study.launchers import Job, describe, make_launcher, share_cores
from analysis.study.plan import NotebookJob, Plan
from analysis.study_dir import RunDir, StudyDir

STEPS = ("train", "capture", "notebooks", "summaries")


class Study:
    """Runs a `StudyConfig`; `run()` returns the outcomes and writes the report.

    After a failed job no new job starts (`stopped`), unless `keep_going`.
    """

    def __init__(self, config: StudyConfig, progress: bool = True, keep_going: bool = False):
        self.config = config
        self.dir = StudyDir(config.out_dir, config=config.as_json())  # absolute paths: notebooks get them
        self.root = self.dir.root
        self.report_dir = config.report_dir
        self.plan = Plan(config, self.dir)
        self.progress = progress
        self.keep_going = keep_going
        self.stopped = False
        self.runs = self.plan.runs()
        self.outcomes: list[Outcome] = []
        self.step_times: dict[str, dict] = {}  # step -> {busy, span, jobs} for the steps that had work to do
        self.launcher = None

    # -- what runs ---------------------------------------------------------------------------------
    def trained(self) -> list[RunDir]:
        return [r for r in self.runs if r.trained]

    def captured_runs(self) -> list[RunDir]:
        """The trained runs among the capture seeds."""
        return [r for r in self.trained() if self.plan.captures(r)]

    def layerwise(self, run: RunDir) -> bool:
        return self.plan.layerwise(run)

    def capture_spec(self, run: RunDir) -> dict:
        return self.plan.capture_spec(run)

    def notebook_jobs(self) -> list[NotebookJob]:
        """Every notebook the config asks for, as things stand on disk (runs captured completely)."""
        jobs = []
        for run in self.captured_runs():
            spec = self.capture_spec(run)
            if job_bodies.capture_complete(run, spec):
                jobs += self.plan.run_notebooks(run, spec)
        return jobs + self.plan.summary_notebooks()

    def notebook_stamp(self, job: NotebookJob) -> dict:
        return self.plan.notebook_stamp(job)

    def _train(self, run: RunDir) -> Job:
        args = (self.plan.recipe(run), self.plan.overrides(run), run)
        return Job("train", run.name, job_bodies.train_job, args, follow=lambda: self._capture(run),
                   done=job_bodies.train_current(*args))

    def _capture(self, run: RunDir) -> list[Job]:
        if not self.plan.captures(run):
            return []
        spec = self.capture_spec(run)
        return [Job("capture", run.name, job_bodies.capture_job, (run, spec), follow=lambda: self._notebooks(run, spec),
                    done=job_bodies.capture_complete(run, spec))]

    def _notebook(self, step: str, job: NotebookJob) -> Job:
        stamp = self.notebook_stamp(job)
        return Job(step, str(job.out.relative_to(self.root)), job_bodies.execute_notebook,
                   (job.notebook, job.out, job.params, stamp), kind="notebook",
                   done=job_bodies.notebook_done(job.out, stamp))

    def _notebooks(self, run: RunDir, spec: dict) -> list[Job]:
        return [self._notebook("notebooks", job) for job in self.plan.run_notebooks(run, spec)]

    def _summaries(self) -> list[Job]:
        return [self._notebook("summaries", job) for job in self.plan.summary_notebooks()]

    # -- running -----------------------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(self.dir.numba_cache))
        write_json(self.dir.study_file, self.config.as_json())
        start = time.perf_counter()
        with share_cores(self.config.workers):
            self.schedule([self._train(run) for run in self.runs], last=self._summaries)
        seconds = time.perf_counter() - start
        # the last measured time of every step, kept across runs: a resumed run that does nothing keeps it
        kept = read_json(self.dir.timings_file) or {}
        merged = {**(kept.get("steps", {}) if "steps" in kept else {}), **self.step_times}
        timings = {"steps": {step: merged[step] for step in STEPS if step in merged},
                   "wall": seconds if self.step_times else kept.get("wall"), "workers": self.config.workers}
        write_json(self.dir.timings_file, timings)
        log = RunLog(self.outcomes, timings["steps"], seconds, self.stopped, wall=timings["wall"],
                     workers=self.config.workers)
        write_report(self.dir, log, self.report_dir)
        return self.outcomes

    def schedule(self, jobs: list[Job], *, last=None) -> None:
        """Run `jobs` and the jobs they lead to, at most the launcher's `slots` at once, earlier steps first;
        then the jobs `last()` returns. Outcomes and per-step times are recorded."""
        if self.stopped:
            return
        launcher = self.launcher or make_launcher(self.config.launcher, self.dir.root / "submitit",
                                                  self.config.workers, timeout=self.config.notebook_timeout)
        order = itertools.count()
        ready: list[tuple[int, int, Job]] = []
        running: dict[Future, tuple[Job, float]] = {}
        span: dict[str, list[float]] = {}
        bar = tqdm(total=0, desc="study", disable=not self.progress)

        def add(new: list[Job]) -> None:
            for job in new:
                if job.done:
                    self.outcomes.append(Outcome(job.step, job.target, "skipped"))
                    add(job.follow() if job.follow else [])
                else:
                    heapq.heappush(ready, (STEPS.index(job.step) if job.step in STEPS else 0, next(order), job))
                    bar.total += 1
                    bar.refresh()

        try:
            add(jobs)
            while True:
                while ready and len(running) < launcher.slots and not self.stopped:
                    job = heapq.heappop(ready)[2]
                    t0 = time.perf_counter()
                    span.setdefault(job.step, [t0, t0])
                    running[launcher.submit(job)] = (job, t0)
                if self.stopped and ready:
                    self.outcomes += [Outcome(job.step, job.target, "cancelled") for _, _, job in sorted(ready)]
                    ready.clear()
                if not running:
                    if last is not None and not self.stopped:
                        add(last())
                        last = None
                        continue
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, t0 = running.pop(future)
                    now = time.perf_counter()
                    span[job.step][1] = now
                    times = self.step_times.setdefault(job.step, {"busy": 0.0, "span": 0.0, "jobs": 0})
                    times.update(busy=times["busy"] + now - t0, span=now - span[job.step][0], jobs=times["jobs"] + 1)
                    try:
                        future.result()
                    except Exception as exc:  # noqa: BLE001 - report it; stop starting jobs unless keep_going
                        self.outcomes.append(Outcome(job.step, job.target, "failed", now - t0, describe(exc)))
                        tqdm.write(f"{job.step} {job.target} FAILED: {describe(exc)}")
                        self.stopped = self.stopped or not self.keep_going
                    else:
                        self.outcomes.append(Outcome(job.step, job.target, "done", now - t0))
                        add(job.follow() if job.follow else [])
                    bar.update()
        finally:
            bar.close()
            if self.launcher is None:
                launcher.close()
