"""The worker ``bench compare`` runs inside each git revision it measures.

``serve`` builds the cases of one setup, warms them up, then times repeats on request, so
two revisions can be measured interleaved (A B A B ...) by ``genbench.benchmarks.compare``.
The conversation is JSON lines on stdin / stdout; ``PROTOCOL`` versions it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

from genbench.benchmarks.environment import fingerprint
from genbench.benchmarks.fastpath import FastPaths
from genbench.benchmarks.plan import Overrides, RunPlan, resolve
from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.speed import (
    MIN_REPEATS,
    SpeedCase,
    SpeedSettings,
    case_timer,
    make_record,
    resolved_settings,
    speed_cases,
)
from genbench.benchmarks.timing import SamplingTimer
from genbench.core.device import resolve_device
from genbench.core.errors import GenbenchError
from genbench.generators import Generator
from genbench.store.records import Environment

PROTOCOL = 1
"""Version of the worker conversation; ``bench compare`` checks it before asking anything."""


class Worker:
    """State of one ``serve`` process: the cases of one setup and their timers."""

    def __init__(self) -> None:
        self.cases: list[SpeedCase] = []
        self.timers: list[SamplingTimer] = []
        self.gens: list[Generator] = []
        self.env: Environment | None = None

    def setup(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Build and warm up every case; a model this revision cannot resolve or build
        (say, a generator it does not have yet) is reported under "skipped"."""
        spec, source = read_spec(msg["spec"])
        fast = FastPaths(**msg["fast"])
        skipped: dict[str, str] = {}
        for name in msg["models"]:
            try:
                plan = resolve(spec, source, Overrides(models=[name], device=msg["device"]))
                device = resolve_device(plan.benchmark.device)
                fast.check(device)
                settings = SpeedSettings(
                    batch_sizes=msg["batch_sizes"],
                    steps=msg.get("steps"),
                    fast=fast,
                    repeats=MIN_REPEATS,  # the driver decides how many it asks for
                    warmup=msg["warmup"],
                )
                self._add(plan, resolved_settings(plan, settings), device)
            except GenbenchError as exc:
                skipped[name] = str(exc)
        env = self.env.fingerprint() if self.env is not None else {}
        return {
            "protocol": PROTOCOL,
            "environment": env,
            "cases": [c.key() for c in self.cases],
            "skipped": skipped,
        }

    def _add(self, plan: RunPlan, settings: SpeedSettings, device: torch.device) -> None:
        self.env = self.env or fingerprint(device)
        for case in speed_cases(plan, settings):
            timer, gen = case_timer(plan, case, settings, device)
            timer.start(settings.warmup or 0)
            self.cases.append(case)
            self.timers.append(timer)
            self.gens.append(gen)

    def finish(self) -> dict[str, Any]:
        """The records of every case that was timed (a case the other revision lacks is
        never timed, and has nothing to say)."""
        records = []
        for case, timer, gen in zip(self.cases, self.timers, self.gens, strict=True):
            if not timer.raw_s or self.env is None:
                continue
            record = make_record(
                case,
                timer.result().to_dict(),
                self.env,
                generator=case.model.generator,
                parameters=gen.num_parameters(),
                speed_id="compare",
            )
            records.append(record.model_dump(mode="json"))
        return {"records": records}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "hello":
            return {"protocol": PROTOCOL}
        if op == "setup":
            return self.setup(msg)
        if op == "time":
            return {"raw_s": self.timers[msg["case"]].repeat(msg["n"])}
        if op == "finish":
            return self.finish()
        if op == "quit":
            return {}
        raise GenbenchError(f"unknown worker request {op!r}")


def serve() -> None:
    """Answer ``bench compare``'s JSON-line requests on stdin, one JSON line each on stdout.

    Anything else the process prints goes to stderr, so stray output never breaks replies.
    """
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = Worker()
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = {"ok": True, **worker.handle(msg)}
        except GenbenchError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # reported to the driver, which names the revision
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        if msg.get("op") == "quit":
            break
    replies.close()
