"""The isolation matrix: probes run inside each sandbox, judged against what the host itself sees.

`templates/probes/isolation.sh` only looks and prints `key=value` lines; everything here that decides
is pure (`judge`, `judge_hog`, `judge_forks`), so unit tests feed it recorded outputs. A verdict says
whether what the sandbox reached is the host's own (`shared_with_host`), with the evidence it saw.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmctl.compare import footprint
from vmctl.compare.results import Verdict
from vmctl.compare.sandboxes import Instance
from vmctl.paths import TEMPLATES_DIR
from vmctl.runner import run

PROBE_SCRIPT = TEMPLATES_DIR / "probes" / "isolation.sh"
MARKER_HEAD = "vmctl-isolation-"
MAX_FORKS_CAP = 1024  # the "fork bomb" is a bounded loop: never more than this many processes
DISK_READ = 4096
DMESG_CUT = 160  # the probe sends the first kernel log lines cut to this many characters

MEANING: dict[str, str] = {
    "kernel": "the same kernel release and boot_id as the host means the sandbox runs on the host's kernel: "
              "every kernel bug is reachable from it.",
    "host_processes": "seeing a marker process the host started means the host's process table is visible "
                      "(and signals or ptrace may reach it).",
    "block_devices": "reading the first bytes of the host's root disk means host block devices (and every "
                     "filesystem on them) are reachable.",
    "kernel_log": "reading the host's kernel log leaks addresses, hardware and other tenants' events.",
    "kernel_modules": "a module load request reaching the host kernel means code could be loaded into it.",
    "kallsyms": "real kernel symbol addresses defeat KASLR, the first step of most kernel exploits.",
    "sysctl_write": "a successful write to a global sysctl changes the host kernel's settings for everyone.",
    "clock": "the same uptime as the host means the sandbox reads the host kernel's clock (a time source "
             "shared with every tenant).",
    "network_stack": "the host's network namespace means the sandbox shares its interfaces, ports and "
                     "firewall rules.",
    "memory_limit": "a memory hog stopped inside the sandbox (OOM-killed at its limit) while the host keeps "
                    "its free memory means a tenant cannot starve the host.",
    "fork_bomb": "process creation stopped at the sandbox's limit (or in a guest kernel) means a fork bomb "
                 "cannot exhaust the host's process table.",
    "privileged": "what a `privileged` variant of the same sandbox reaches of the host: for a container, "
                  "privileged means host devices and the host kernel; for a microVM, only the guest's.",
}
PROBES = tuple(MEANING)
PRIVILEGED_PROBES = ("block_devices", "kernel_log", "kernel_modules", "kallsyms", "sysctl_write")


# ------------------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class HostView:
    release: str
    boot_id: str
    marker: str
    block_dev: str  # "MAJ:MIN" of the host's root filesystem device
    block_md5: str | None
    dmesg: frozenset[str]
    kallsyms_first: str
    uptime: float
    net_ns: str
    processes: int


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _root_device() -> tuple[str, Path | None]:
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0:  # an overlay or tmpfs root: take the first disk the kernel lists
        for line in _read("/proc/partitions").splitlines()[2:]:
            parts = line.split()
            if len(parts) == 4:
                major, minor = int(parts[0]), int(parts[1])
                break
    uevent = _read(f"/sys/dev/block/{major}:{minor}/uevent")
    name = next((x.split("=", 1)[1] for x in uevent.splitlines() if x.startswith("DEVNAME=")), None)
    return f"{major}:{minor}", Path("/dev", name) if name else None


def _md5_head(path: Path | None) -> str | None:
    import hashlib

    if path is None:
        return None
    try:
        with path.open("rb") as f:
            return hashlib.md5(f.read(DISK_READ), usedforsecurity=False).hexdigest()
    except OSError:
        return None


def host_view(marker: str) -> HostView:
    dev, node = _root_device()
    dmesg = run(["dmesg"], check=False, timeout=30).stdout.decode(errors="replace").splitlines()
    kallsyms = _read("/proc/kallsyms").split("\n", 1)[0] if os.geteuid() == 0 else ""
    return HostView(
        release=os.uname().release, boot_id=_read("/proc/sys/kernel/random/boot_id"), marker=marker,
        block_dev=dev, block_md5=_md5_head(node), dmesg=frozenset(line.strip() for line in dmesg),
        kallsyms_first=kallsyms.strip(), uptime=float(_read("/proc/uptime").split()[0]),
        net_ns=os.readlink("/proc/self/ns/net"),
        processes=sum(1 for p in Path("/proc").iterdir() if p.name.isdigit()),
    )


@contextlib.contextmanager
def marker_process() -> Iterator[str]:
    """A host process whose command line carries a fresh token: a sandbox that sees it sees host processes."""
    marker = MARKER_HEAD + secrets.token_hex(6)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield marker
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------- parsing, judging


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key and " " not in key:
            out[key.strip()] = value.strip()
    return out


def _lines(value: str) -> list[str]:
    return [x.strip() for x in value.split("|") if x.strip()]


def judge(host: HostView, seen: Mapping[str, str], sandbox: str) -> list[Verdict]:
    """Verdicts for the `probe` part of the script (every probe except memory_limit, fork_bomb, privileged)."""
    same_kernel = seen.get("kernel.boot_id") == host.boot_id
    where = "the host's kernel" if same_kernel else "its own kernel"

    def v(probe: str, shared: bool | None, evidence: str) -> Verdict:
        return Verdict(probe, sandbox, shared, evidence, MEANING[probe])

    out = [v("kernel", same_kernel,
             f"release {seen.get('kernel.release', '?')} (host {host.release}), boot_id "
             f"{seen.get('kernel.boot_id', '?')[:8]}… (host {host.boot_id[:8]}…)")]
    marker_seen = seen.get("procs.marker_seen") == "yes"
    out.append(v("host_processes", marker_seen,
                 f"{seen.get('procs.count', '?')} processes visible (host has {host.processes}); host marker "
                 f"process {'seen' if marker_seen else 'not seen'}"))
    md5 = seen.get("block.md5")
    if md5:
        same = md5 == host.block_md5
        text = (f"read device {host.block_dev}: its first {DISK_READ} bytes "
                f"{'match' if same else 'differ from'} the host's root disk")
    elif not same_kernel:
        same, text = False, (f"device {host.block_dev} in the guest kernel is a guest disk: "
                             f"{seen.get('block.error', 'no answer')}")
    elif host.block_md5 is None and not seen.get("block.error", "").startswith("mknod"):
        same, text = None, (f"device {host.block_dev}: {seen.get('block.error', 'no answer')}; undecided: the host "
                            "itself cannot read its root disk here (vmctl runs in an outer sandbox)")
    else:
        same, text = False, f"device {host.block_dev}: {seen.get('block.error', 'no answer')}"
    out.append(v("block_devices", same, f"{text}; partitions seen: {seen.get('block.partitions', '?').strip()}"))
    if "dmesg.head" in seen:
        head = _lines(seen["dmesg.head"])
        host_lines = {line[:DMESG_CUT] for line in host.dmesg}
        shared = bool(head) and all(line[:DMESG_CUT] in host_lines for line in head)
        out.append(v("kernel_log", shared, f"readable; first line {'is' if shared else 'is not'} in the host's log: "
                                           f"{head[0][:90] if head else '(empty)'}"))
    else:
        out.append(v("kernel_log", False, f"not readable: {seen.get('dmesg.error', 'no answer')}"))
    out.append(_judge_modules(seen, same_kernel, where, v))
    first = seen.get("kallsyms.first", "")
    addr = first.split()[0] if first.split() else ""
    real = bool(addr) and set(addr) != {"0"} and not first.startswith(("cat:", "head:"))
    shared_ks = real and same_kernel and first == host.kallsyms_first
    out.append(v("kallsyms", shared_ks, f"first symbol: {first[:60] or '(unreadable)'}"
                 + ("" if real else " (addresses hidden)") + ("" if same_kernel or not real else " — guest kernel")))
    sysctl = seen.get("sysctl.write", "")
    out.append(v("sysctl_write", sysctl.startswith("ok") and same_kernel, f"{sysctl or 'no answer'} ({where})"))
    try:
        uptime = float(seen.get("clock.uptime", "nan"))
        shared_clock = abs(uptime - host.uptime) < 30.0
        out.append(v("clock", shared_clock, f"uptime {uptime:.0f} s (host {host.uptime:.0f} s)"))
    except ValueError:
        out.append(v("clock", None, "no uptime"))
    ns = seen.get("net.ns", "?")
    shared_net = same_kernel and ns == host.net_ns
    out.append(v("network_stack", shared_net, f"namespace {ns} (host {host.net_ns}), interfaces "
                                               f"{seen.get('net.interfaces', '?').strip()}"))
    return out


def _judge_modules(seen: Mapping[str, str], same_kernel: bool, where: str,
                   v: Callable[[str, bool | None, str], Verdict]) -> Verdict:
    msg = seen.get("modules.insmod", "no answer").replace("|", " ").strip()
    caps = seen.get("caps.effective", "0")
    try:
        has_cap = bool(int(caps, 16) & (1 << 16))  # CAP_SYS_MODULE
    except ValueError:
        has_cap = False
    refused = "not permitted" in msg.lower()
    unsupported = "not support" in msg.lower() or "not implemented" in msg.lower()
    if not same_kernel:
        return v("kernel_modules", False, f"a load request goes to the guest kernel: {msg}")
    if unsupported:
        return v("kernel_modules", False, f"this host kernel has no module loading at all ({msg}); "
                                          f"CAP_SYS_MODULE {'held' if has_cap else 'not held'}")
    return v("kernel_modules", not refused, f"{msg}; CAP_SYS_MODULE {'held' if has_cap else 'not held'} ({where})")


def judge_hog(sandbox: str, seen: Mapping[str, str], *, bound_mib: float, peak_mib: float,
              host_drop_mib: float) -> Verdict:
    """Contained = the hog was killed (or failed to allocate) inside, and the host did not pay for it."""
    out = seen.get("hog.output", "")
    before, after = seen.get("hog.oom_before", ""), seen.get("hog.oom_after", "")
    killed = "sigkill" in out.lower() or "oom" in out.lower() or (bool(before) and before != after)
    host_ok = host_drop_mib < float(seen.get("hog.mib", "0") or 0) * 0.9
    contained = killed and peak_mib <= bound_mib * 1.25 + 64 and host_ok
    evidence = (f"hog of {seen.get('hog.mib', '?')} MiB: {'killed by OOM' if killed else 'not stopped'} "
                f"(OOM kills {before} -> {after}); sandbox peak {peak_mib:.0f} MiB against a bound of "
                f"{bound_mib:.0f} MiB; host MemAvailable fell by {max(0.0, host_drop_mib):.0f} MiB")
    return Verdict("memory_limit", sandbox, not contained, evidence, MEANING["memory_limit"])


def judge_forks(sandbox: str, seen: Mapping[str, str], *, asked: int, same_kernel: bool,
                pids_limit: str) -> Verdict:
    try:
        started = int(seen.get("forks.started", "-1"))
    except ValueError:
        started = -1
    stopped = 0 <= started < asked
    contained = stopped or not same_kernel
    where = "in the host kernel" if same_kernel else "in the guest kernel (the host sees one QEMU)"
    evidence = (f"pids limit {pids_limit}; started {started} of {asked} processes "
                f"{'before fork failed' if stopped else 'without hitting a limit'}, {where}")
    return Verdict("fork_bomb", sandbox, not contained, evidence, MEANING["fork_bomb"])


def judge_privileged(sandbox: str, verdicts: list[Verdict]) -> Verdict:
    reached = [x.probe for x in verdicts if x.probe in PRIVILEGED_PROBES and x.shared_with_host]
    evidence = ("privileged variant reaches the host's " + ", ".join(reached)) if reached else (
        "privileged variant reaches none of the host's " + ", ".join(PRIVILEGED_PROBES))
    return Verdict("privileged", sandbox, bool(reached), evidence, MEANING["privileged"])


# ------------------------------------------------------------------------------------- running


def script_argv(*args: str) -> list[str]:
    """`sh -c SCRIPT isolation.sh ARGS...`: the script travels in argv, so no file is needed inside."""
    return ["sh", "-c", PROBE_SCRIPT.read_text(), "isolation.sh", *args]


def probe_instance(inst: Instance, host: HostView, sandbox: str) -> list[Verdict]:
    head, tail = host.marker[: len(MARKER_HEAD)], host.marker[len(MARKER_HEAD):]
    res = inst.exec(script_argv("probe", head, tail, host.block_dev), timeout=120)
    seen = parse(res.out)
    if seen.get("done") != "yes":
        return [Verdict(p, sandbox, None, f"probe script failed (exit {res.code}): {res.err.strip()[-200:]}",
                        MEANING[p]) for p in PROBES if p not in ("memory_limit", "fork_bomb", "privileged")]
    return judge(host.__class__(**{**host.__dict__, "uptime": _uptime()}), seen, sandbox)


def _uptime() -> float:
    return float(_read("/proc/uptime").split()[0])


def hog_instance(inst: Instance, sandbox: str, *, bound_mib: float, hog_mib: int) -> Verdict:
    before = footprint.host_mem_available_mib()
    with footprint.PeakSampler(inst.pids, inst.cgroup, interval=0.1) as sampler:
        res = inst.exec(script_argv("hog", str(hog_mib)), timeout=180)
    seen = parse(res.out)
    if seen.get("done") != "yes":
        return Verdict("memory_limit", sandbox, None, f"hog did not report (exit {res.code}): "
                       f"{res.err.strip()[-200:]}", MEANING["memory_limit"])
    peak = sampler.peak_cgroup if sampler.peak_cgroup is not None else sampler.peak_pss
    peak = max(peak, (footprint.cgroup_peak_bytes(inst.cgroup()) or 0) / 2**20)
    return judge_hog(sandbox, seen, bound_mib=bound_mib, peak_mib=peak, host_drop_mib=before - sampler.min_available)


def pids_limit_of(inst: Instance) -> str:
    res = inst.exec(["sh", "-c", "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"],
                    timeout=60)
    return res.out.strip() or "unknown"


def forks_instance(inst: Instance, sandbox: str, *, same_kernel: bool) -> Verdict:
    """Never unbounded: the loop stops at `asked` whatever happens, and only runs on the host's kernel when a
    pids limit below that is in place (read inside the sandbox)."""
    limit = pids_limit_of(inst)
    if limit.isdigit():
        asked = min(4 * int(limit), MAX_FORKS_CAP)
    elif same_kernel:
        return Verdict("fork_bomb", sandbox, None, f"not run: no pids limit could be verified ({limit})",
                       MEANING["fork_bomb"])
    else:
        asked = 256
    res = inst.exec(script_argv("forks", str(asked)), timeout=120)
    time.sleep(0.2)
    return judge_forks(sandbox, parse(res.out), asked=asked, same_kernel=same_kernel, pids_limit=limit)
