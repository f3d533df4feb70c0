"""Workload performance inside each sandbox, from the tools in the project's own `tools` image.

Each benchmark is an argv run inside the sandbox (or, for the network, a client on the host talking
to a server in the sandbox through the published port) and a parser that turns its output into one
number. Ratios to the plain container are added by `results.with_ratios`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmctl.compare.sandboxes import Instance
from vmctl.errors import VmctlError
from vmctl.runner import run, which

IPERF_PORT = 5201


@dataclass(frozen=True)
class Bench:
    workload: str
    metric: str
    unit: str
    describe: str
    measure: Callable[[Instance, float], float]


def _in(inst: Instance, argv: list[str], timeout: float) -> str:
    res = inst.exec(argv, timeout=timeout)
    if res.code != 0:
        raise VmctlError(f"`{' '.join(argv[:3])} ...` failed in {inst.sandbox} (exit {res.code}): "
                         f"{(res.err or res.out).strip()[-300:]}")
    return res.out + res.err


def parse_stress_bogo(text: str, stressor: str) -> float:
    """bogo ops/s (real time) from `stress-ng --metrics-brief`."""
    for line in text.splitlines():
        m = re.search(rf"\] {stressor}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)", line)
        if m:
            return float(m.group(2))
    raise VmctlError(f"no `{stressor}` metrics in stress-ng output: {text.strip()[-300:]}")


def parse_memrate(text: str, method: str = "memset") -> float:
    m = re.search(rf"memrate\s+([\d.]+) {method} MB per sec", text)
    if not m:
        raise VmctlError(f"no memrate `{method}` rate in stress-ng output: {text.strip()[-300:]}")
    return float(m.group(1))


def parse_fio_iops(text: str) -> float:
    start = text.find("{")
    data = json.loads(text[start:])
    job = data["jobs"][0]
    return float(job["read"]["iops"]) + float(job["write"]["iops"])


def parse_iperf_bps(text: str) -> float:
    data = json.loads(text)
    if "error" in data:
        raise VmctlError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"])


def cpu(inst: Instance, seconds: float) -> float:
    argv = ["stress-ng", "--cpu", "1", "--cpu-method", "int64", "--timeout", f"{seconds:g}s", "--metrics-brief"]
    return parse_stress_bogo(_in(inst, ["sh", "-c", 'cd /tmp && exec "$@"', "sh", *argv], seconds * 10 + 60), "cpu")


def memory(inst: Instance, seconds: float) -> float:
    argv = ["stress-ng", "--memrate", "1", "--memrate-bytes", "4M", "--timeout", f"{seconds:g}s", "--metrics"]
    return parse_memrate(_in(inst, ["sh", "-c", 'cd /tmp && exec "$@"', "sh", *argv], seconds * 10 + 60))


def file_io(inst: Instance, seconds: float) -> float:
    argv = ["fio", "--name=cmp", "--directory=/tmp", "--size=32M", "--rw=randrw", "--bs=4k", "--ioengine=psync",
            "--thread", f"--runtime={seconds:g}", "--time_based", "--output-format=json"]
    try:
        return parse_fio_iops(_in(inst, argv, seconds * 10 + 60))
    finally:
        inst.exec(["rm", "-f", "/tmp/cmp.0.0"], timeout=30)


def network(inst: Instance, seconds: float) -> float:
    host_port = inst.ports.get(IPERF_PORT)
    if host_port is None:
        raise VmctlError(f"{inst.sandbox}: port {IPERF_PORT} is not published (add it to the service's ports)")
    _in(inst, ["sh", "-c", f"iperf3 -s -1 -p {IPERF_PORT} < /dev/null > /dev/null 2>&1 &"], 60)
    client = [which("iperf3"), "-c", "127.0.0.1", "-p", str(host_port), "-t", f"{seconds:g}", "-J"]
    deadline = time.monotonic() + 30
    while True:
        proc = run(client, check=False, timeout=seconds * 10 + 60)
        text = proc.stdout.decode(errors="replace")
        if proc.returncode == 0 and '"error"' not in text:
            return parse_iperf_bps(text)
        if time.monotonic() > deadline:
            raise VmctlError(f"iperf3 to {inst.sandbox} through 127.0.0.1:{host_port} failed: {text[-300:]}")
        time.sleep(0.3)


REDIS_PORT = 6379
REDIS_REQUESTS = 20000


def parse_redis_csv(text: str) -> float:
    """Mean requests/s over the tests of `redis-benchmark --csv` ("test","rps",...)."""
    rates = []
    for line in text.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if len(fields) >= 2 and fields[0] in ("SET", "GET"):
            rates.append(float(fields[1]))
    if not rates:
        raise VmctlError(f"redis-benchmark printed no SET/GET results: {text.strip()[-300:]}")
    return sum(rates) / len(rates)


def application(inst: Instance, seconds: float) -> float:
    """A real application: redis, served and benchmarked inside the sandbox (over its own loopback)."""
    _in(inst, ["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no", "--daemonize", "yes",
               "--dir", "/tmp", "--pidfile", "/tmp/redis.pid", "--logfile", "/tmp/redis.log"], 60)
    # redis-benchmark does not give up on a server that is not listening yet: wait for the socket
    # (LISTEN state, port in hex, in /proc/net/tcp) and bound the benchmark with busybox's timeout.
    listening = f"grep -q ':{REDIS_PORT:04X} 00000000:0000 0A' /proc/net/tcp"
    try:
        _in(inst, ["sh", "-c", f"for i in $(seq 300); do {listening} && exit 0; sleep 0.1; done; exit 1"], 60)
        limit = int(seconds * 20 + 60)
        argv = ["timeout", str(limit), "redis-benchmark", "-p", str(REDIS_PORT), "-q", "--csv", "-t", "set,get",
                "-n", str(REDIS_REQUESTS)]
        return parse_redis_csv(_in(inst, argv, limit + 30))
    finally:
        # stop it and wait until the port is free: the next sample's server must not find it taken
        stop = f"kill $(cat /tmp/redis.pid) 2>/dev/null; for i in $(seq 100); do {listening} || break; sleep 0.1; done"
        inst.exec(["sh", "-c", f"{stop}; rm -f /tmp/redis.pid; true"], timeout=30)


BENCHES = (
    Bench("cpu", "cpu_bogo_ops_per_s", "bogo-ops/s", "stress-ng --cpu 1 --cpu-method int64", cpu),
    Bench("memory", "memory_mb_per_s", "MB/s", "stress-ng --memrate (memset, 4 MiB buffer)", memory),
    Bench("file_io", "fio_iops", "IOPS", "fio 4k random read+write, psync, on the sandbox's /tmp", file_io),
    Bench("network", "iperf3_bits_per_s", "bit/s", "iperf3 from the host through the published port", network),
    Bench("redis", "redis_requests_per_s", "req/s",
          f"redis-benchmark SET/GET ({REDIS_REQUESTS} requests, 50 clients) against redis-server, both in the sandbox",
          application),
)
