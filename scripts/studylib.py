"""Shared by scripts/results-table and scripts/dyrelu-study: resume-safe runs of east-trainer
(a run whose result.json says finished is skipped; an interrupted one continues from its
checkpoint with --resume), a plan with the estimated time, one progress line per run with an ETA,
and mean ± standard deviation."""
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def finished(d):
    try:
        with open(os.path.join(d, "result.json")) as f:
            return json.load(f).get("finished", False)
    except (OSError, ValueError):
        return False


def load(d):
    with open(os.path.join(d, "result.json")) as f:
        return json.load(f)


class Run:
    """One trainer invocation: `args` without --out/--threads/--resume; `cost` its estimated
    single-thread seconds on an idle machine (only used for the plan and the ETA)."""

    def __init__(self, label, out, args, cost):
        self.label, self.out, self.args, self.cost = label, out, list(args), float(cost)


def hours(s):
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"


def run_all(runs, trainer, jobs=2, threads=1, dry_run=False, log=sys.stdout):
    """Runs every unfinished run, `jobs` at a time. Prints the plan first, then one line per run."""
    todo = [r for r in runs if not finished(r.out)]
    est = sum(r.cost for r in todo) / max(1, jobs)
    print(f"{time.strftime('%H:%M:%S')} {len(runs) - len(todo)} of {len(runs)} runs finished, {len(todo)} to do; "
          f"estimate {hours(est)} on an idle {jobs}-core machine ({jobs} runs at a time, {threads} thread each; "
          "longer while other jobs share the cores)", file=log, flush=True)
    if dry_run:
        for r in todo:
            print("  " + " ".join([trainer] + r.args + ["--threads", str(threads), "--out", r.out, "--resume"]), file=log)
        return
    if not todo:
        return
    lock = threading.Lock()
    state = {"done": 0, "cost_done": 0.0, "t0": time.time(), "failed": 0}
    total_cost = sum(r.cost for r in todo)

    def one(r):
        os.makedirs(r.out, exist_ok=True)
        cmd = [trainer] + r.args + ["--threads", str(threads), "--out", r.out, "--resume", "--quiet"]
        t0 = time.time()
        with open(os.path.join(r.out, "log.txt"), "a") as lf:
            rc = subprocess.call(cmd, stdout=lf, stderr=subprocess.STDOUT)
        secs = time.time() - t0
        msg = f"{time.strftime('%H:%M:%S')} {r.label}: rc {rc}, {secs:.0f} s"
        if rc == 0 and finished(r.out):
            msg += f", test acc {100 * load(r.out)['test_accuracy']:.2f}%"
        with lock:
            state["done"] += 1
            state["cost_done"] += r.cost
            state["failed"] += rc != 0
            wall = time.time() - state["t0"]
            # Wall seconds per unit of estimated cost so far (it absorbs the load and the
            # parallelism); the ETA is the remaining cost at that rate.
            rate = wall / max(state["cost_done"], 1e-9)
            eta = (total_cost - state["cost_done"]) * rate
            msg += f"  [{state['done']}/{len(todo)}, {hours(wall)} elapsed, ETA {hours(eta)}]"
            print(msg, file=log, flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as ex:
        for r in todo:
            ex.submit(one, r)
    print(f"{time.strftime('%H:%M:%S')} all runs done ({state['failed']} failed) in "
          f"{hours(time.time() - state['t0'])}", file=log, flush=True)


def mean_sd(v):
    """Mean and sample standard deviation (nan for one value)."""
    if not v:
        return None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else float("nan")), len(v)


def fmt(c, want_n=None, digits=2):
    if c is None:
        return "–"
    m, sd, n = c
    if n == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {sd:.{digits}f}" + ("" if want_n in (None, n) else f" (n={n})")


def separated(a, b):
    """'>' / '<' when the means differ by more than the larger standard deviation, else '≈'."""
    if a is None or b is None or a[2] < 2 or b[2] < 2:
        return "?"
    spread = max(a[1], b[1])
    if math.isnan(spread):
        return "?"
    return ">" if a[0] - b[0] > spread else "<" if b[0] - a[0] > spread else "≈"
