"""`cocoa-lens study`: the command line. Cheap to import (argparse only): the study loads when the command runs."""

from __future__ import annotations

import sys


def _study_command(args) -> int:
    from analysis.study.config import StudyConfig
    from analysis.study.runner import Study

    config = StudyConfig.load(args.config)
    study = Study(config, keep_going=args.keep_going)
    outcomes = study.run()
    failed = [o for o in outcomes if o.status == "failed"]
    summary = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "cancelled")}
    print(f"study finished: {summary}; report in {config.report_dir}/report.md")
    for o in failed:
        print(f"cocoa-lens study: FAILED {o.step} {o.target}: {o.error}", file=sys.stderr)
    if study.stopped:
        print("cocoa-lens study: stopped after the first failure; fix it and rerun (finished work is kept), or "
              "rerun with --keep-going to run everything that does not depend on it", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="train the grid, capture, run the notebooks and write the report",
                              description="Train the grid, capture, run the notebooks and write the report. "
                                          "Resumes: finished work is kept. Exits 1 when any job failed.")
    p.add_argument("--config", default="experiments/default.yaml")
    p.add_argument("--keep-going", action="store_true",
                   help="after a failed job, go on with every other job (still exits 1 at the end); by default "
                        "no new job starts after a failure, the running ones finish and the report is written")
    p.set_defaults(func=_study_command)
