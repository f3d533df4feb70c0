"""Benchmark: cold start of the example web service to its first HTTP answer, as a plain container
(runc, docker, podman where present) and inside a microVM, with the microVM's phases.

    .venv/bin/python -m bench.services [--runs 5] [--sandboxes runc,microvm] [--json]

Medians of N runs after one excluded warm-up, measured side by side in one run. Every figure carries
the accelerator the microVM ran on (TCG here: software emulation, far slower than KVM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.vmstats import add_out_option, results_file
from vmctl.compare.run import select, workload_for
from vmctl.compare.sandboxes import Instance, Sandbox, Workload
from vmctl.outputs import JsonLines
from vmctl.progress import Progress
from vmctl.spec import load_environment

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / "examples" / "quickstart.yaml"
WEB_PORT = 8080


def first_answer(inst: Instance, t_start: float, timeout: float = 60.0) -> float:
    """Seconds from `t_start` until the web server answers an HTTP GET: through the published port on
    127.0.0.1, or from inside the sandbox where it publishes none (docker with `--bridge=none` here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(inst):
            return time.monotonic() - t_start
        time.sleep(0.01)
    raise TimeoutError(f"the web server in {inst.sandbox} did not answer within {timeout:.0f} s")


def _answers(inst: Instance) -> bool:
    if WEB_PORT not in inst.ports:
        return inst.exec(["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{WEB_PORT}/"], timeout=5).code == 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{inst.ports[WEB_PORT]}/", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def measure(sb: Sandbox, workload: Workload, runs: int, progress: Progress) -> dict[str, Any]:
    answers: list[float] = []
    phases: list[dict[str, float]] = []
    for i in range(runs + 1):
        progress.working(sb.name, "warm-up" if i == 0 else f"run {i}/{runs}")
        t0 = time.monotonic()
        inst = sb.start(workload, f"web{i}")
        try:
            answer = first_answer(inst, t0)
        finally:
            inst.stop()
        if i:
            answers.append(answer)
            phases.append({**inst.phases, "first HTTP answer": round(answer - inst.start_seconds, 4)})
    names = list(dict.fromkeys(k for p in phases for k in p))
    return {"sandbox": sb.name, "accel": sb.accel, "samples": [round(a, 4) for a in answers],
            "checked": "from the host" if WEB_PORT in inst.ports else "inside the sandbox (no published port)",
            "median": round(statistics.median(answers), 4), "min": round(min(answers), 4),
            "max": round(max(answers), 4),
            "phases": {k: round(statistics.median(p.get(k, 0.0) for p in phases), 4) for k in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sandboxes", default="", help="comma-separated; default: every one this host has")
    parser.add_argument("--json", action="store_true")
    add_out_option(parser)
    args = parser.parse_args()
    with results_file(parser, args.out) as out:
        results, skipped = run_all(args.runs, [s for s in args.sandboxes.split(",") if s], out)
    show(results, skipped, args.runs, args.json)


def run_all(runs: int, wanted: list[str], out: JsonLines) -> tuple[list[dict[str, Any]], dict[str, str]]:
    progress = Progress()
    env = load_environment(ENV_FILE)
    svc = env.service("web")
    assert svc is not None
    workload = workload_for(env, svc, progress).variant(memory_limit_mib=None, pids_limit=None)
    sandboxes, skipped = select(env, wanted)
    results = []
    for sb in sandboxes:
        try:
            sb.prepare(workload)
            results.append(measure(sb, workload, runs, progress))
            out.write(results[-1])
        finally:
            sb.close()
    return results, skipped


def show(results: list[dict[str, Any]], skipped: dict[str, str], runs: int, as_json: bool) -> None:
    base = next((r["median"] for r in results if r["sandbox"] == "runc"), None)
    for r in results:
        r["ratio_to_runc"] = round(r["median"] / base, 2) if base else None
    if as_json:
        json.dump({"runs": runs, "results": results, "skipped": skipped}, sys.stdout, indent=2)
        print()
        return
    print(f"cold start of `web` to its first HTTP answer, median of {runs} runs (+1 warm-up excluded)")
    print(f"{'sandbox':<10} {'accel':<6} {'median':>8} {'min':>8} {'max':>8} {'x runc':>7}  answer checked")
    for r in results:
        ratio = f"{r['ratio_to_runc']:.1f}" if r["ratio_to_runc"] else "-"
        print(f"{r['sandbox']:<10} {r['accel'] or '-':<6} {r['median']:>7.3f}s {r['min']:>7.3f}s {r['max']:>7.3f}s "
              f"{ratio:>7}  {r['checked']}")
    for r in results:
        print(f"  {r['sandbox']} phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items()))
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")


if __name__ == "__main__":
    main()
