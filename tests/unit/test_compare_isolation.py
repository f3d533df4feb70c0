"""Isolation verdicts from recorded probe output (no sandbox needed), and the perf parsers."""

from __future__ import annotations

from vmctl.compare import isolation, perf
from vmctl.compare.isolation import HostView, judge, judge_forks, judge_hog, judge_privileged, parse

HOST = HostView(release="6.18.0", boot_id="aaaa-host", marker="vmctl-isolation-123", block_dev="254:0",
                block_md5="abc", dmesg=frozenset({"[    0.000000] Linux version 6.18.0 (x)"}),
                kallsyms_first="ffffffff81000000 T _stext", uptime=1000.0, net_ns="net:[1]", processes=120)

CONTAINER = """\
kernel.release=6.18.0
kernel.boot_id=aaaa-host
procs.count=3
procs.marker_seen=no
block.partitions=vda
block.error=read: head: /dev/.vmctl-blk: Operation not permitted
dmesg.error=dmesg: klogctl: Operation not permitted
modules.insmod=insmod: can't insert '/tmp/.vmctl-mod.ko': Operation not permitted| (exit 1)
kallsyms.first=0000000000000000 T _stext
sysctl.write=refused: can't create /proc/sys/vm/overcommit_ratio: Read-only file system
clock.uptime=1001.5
net.ns=net:[2]
net.interfaces=lo tap0
caps.effective=00000000a80425fb
done=yes
"""

PRIVILEGED = CONTAINER.replace("block.error=read: head: /dev/.vmctl-blk: Operation not permitted", "block.md5=abc") \
    .replace("dmesg.error=dmesg: klogctl: Operation not permitted",
             "dmesg.head=[    0.000000] Linux version 6.18.0 (x)") \
    .replace("Operation not permitted| (exit 1)", "invalid module format| (exit 8)") \
    .replace("0000000000000000 T _stext", "ffffffff81000000 T _stext") \
    .replace("refused: can't create /proc/sys/vm/overcommit_ratio: Read-only file system", "ok: written back") \
    .replace("caps.effective=00000000a80425fb", "caps.effective=000001ffffffffff")

GUEST = PRIVILEGED.replace("kernel.boot_id=aaaa-host", "kernel.boot_id=bbbb-guest") \
    .replace("kernel.release=6.18.0", "kernel.release=6.1.0-cloud").replace("block.md5=abc", "block.md5=def") \
    .replace("Linux version 6.18.0", "Linux version 6.1.0").replace("ffffffff81000000", "ffffffff9a000000") \
    .replace("clock.uptime=1001.5", "clock.uptime=12.0")


def _by_probe(text: str, sandbox: str = "s") -> dict[str, bool | None]:
    return {v.probe: v.shared_with_host for v in judge(HOST, parse(text), sandbox)}


def test_plain_container_shares_kernel_and_clock_only() -> None:
    got = _by_probe(CONTAINER)
    assert got["kernel"] is True and got["clock"] is True
    assert not any(got[p] for p in ("host_processes", "block_devices", "kernel_log", "kernel_modules", "kallsyms",
                                    "sysctl_write", "network_stack"))


def test_privileged_container_reaches_the_host() -> None:
    got = _by_probe(PRIVILEGED)
    assert all(got[p] for p in ("block_devices", "kernel_log", "kernel_modules", "kallsyms", "sysctl_write"))
    verdict = judge_privileged("runc", judge(HOST, parse(PRIVILEGED), "runc (privileged)"))
    assert verdict.shared_with_host is True and "kallsyms" in verdict.evidence


def test_privileged_in_a_guest_reaches_only_the_guest() -> None:
    got = _by_probe(GUEST)
    assert not any(got.values()), got
    assert judge_privileged("microvm", judge(HOST, parse(GUEST), "microvm")).shared_with_host is False


def test_module_loading_absent_from_the_kernel_is_not_shared() -> None:
    text = CONTAINER.replace("Operation not permitted| (exit 1)", "kernel does not support requested operation|")
    assert _by_probe(text)["kernel_modules"] is False


def test_unreadable_host_disk_leaves_block_devices_undecided() -> None:
    host = HostView(**{**HOST.__dict__, "block_md5": None})
    verdicts = {v.probe: v for v in judge(host, parse(CONTAINER), "runc")}
    assert verdicts["block_devices"].shared_with_host is None and "undecided" in verdicts["block_devices"].evidence


def test_every_probe_has_a_meaning() -> None:
    assert set(isolation.PROBES) >= {"kernel", "host_processes", "block_devices", "kernel_log", "kernel_modules",
                                     "kallsyms", "sysctl_write", "clock", "network_stack", "memory_limit",
                                     "fork_bomb", "privileged"}
    assert all(m.endswith(".") for m in isolation.MEANING.values())


def test_hog_and_forks() -> None:
    killed = parse("hog.mib=320\nhog.oom_before=cgroup:0 kernel:1\nhog.oom_after=cgroup:1 kernel:2\nhog.output=x\n")
    assert judge_hog("runc", killed, bound_mib=128, peak_mib=130, host_drop_mib=40).shared_with_host is False
    ran = parse("hog.mib=320\nhog.oom_before=cgroup:0 kernel:1\nhog.oom_after=cgroup:0 kernel:1\nhog.output=ok\n")
    assert judge_hog("x", ran, bound_mib=128, peak_mib=330, host_drop_mib=320).shared_with_host is True
    stopped = parse("forks.started=60\n")
    assert judge_forks("runc", stopped, asked=256, same_kernel=True, pids_limit="64").shared_with_host is False
    unbounded = parse("forks.started=256\n")
    assert judge_forks("runc", unbounded, asked=256, same_kernel=True, pids_limit="max").shared_with_host is True
    assert judge_forks("vm", unbounded, asked=256, same_kernel=False, pids_limit="max").shared_with_host is False


def test_probe_script_is_posix_sh_and_passes_the_marker_in_halves() -> None:
    argv = isolation.script_argv("probe", "vmctl-isolation-", "123", "254:0")
    assert argv[:2] == ["sh", "-c"] and "vmctl-isolation-123" not in " ".join(argv)


def test_perf_parsers() -> None:
    text = ("stress-ng: metrc: [26622] cpu                5824      2.00      1.99      0.00      2911.98        "
            "2917.33\n")
    assert perf.parse_stress_bogo(text, "cpu") == 2911.98
    assert perf.parse_memrate("stress-ng: metrc: [1] memrate  76380.79 memset MB per sec (geometic mean)") == 76380.79
    assert perf.parse_fio_iops('note\n{"jobs": [{"read": {"iops": 10.5}, "write": {"iops": 2}}]}') == 12.5
    assert perf.parse_iperf_bps('{"end": {"sum_received": {"bits_per_second": 1e9}}}') == 1e9


def test_parse_redis_csv_averages_set_and_get() -> None:
    text = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
            '"max_latency_ms"\n"SET","40000.00","0.7","0.1","0.6","1.0","1.5","3.0"\n'
            '"GET","60000.00","0.5","0.1","0.4","0.8","1.2","2.0"\n')
    assert perf.parse_redis_csv(text) == 50000.0
