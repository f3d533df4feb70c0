"""Several libvirt hosts on this one machine, for real: the test bed of vmctl's multi-host support.

    python -m bench.hostbed up DIR [--hosts 2]    start the bed, print its `hosts:` block, return
    python -m bench.hostbed down DIR              stop everything the bed started, remove DIR's mounts
    python -m bench.hostbed run DIR -- CMD...     run CMD in the bed's client namespace (where vmctl runs)

Each host is what a real server would be, seen from vmctl: a network namespace with its own address
(`10.79.0.11`, `.12`... on a private LAN), a mount and UTS namespace of its own holding private
`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, `/var/log/libvirt` and `/var/cache/libvirt`, its own
`virtlogd` + `libvirtd` (QEMU runs as libvirt-qemu, as on any Debian server), and its own `sshd` with a
host key made for it. vmctl runs in a client namespace on the same LAN and reaches each host as
`qemu+ssh://root@ADDR/system` with the bed's client key and a known-hosts file that pins every
host's key. The LAN is a bridge in a namespace of the bed: its addresses exist only inside the bed's
namespaces, so no packet of it reaches the machine's own network or beyond.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmctl import namespaces
from vmctl.paths import cache_root
from vmctl.runner import Arg, run, which

SUBNET = "10.79.0"
CLIENT_ADDRESS = f"{SUBNET}.1"
PRIVATE = ("etc/libvirt", "run/libvirt", "var/lib/libvirt", "var/log/libvirt", "var/cache/libvirt")
START_TIMEOUT = 60.0
STOP_SECONDS = 5.0
CAPS_CACHE = cache_root() / "hostbed" / "libvirt-qemu"


@dataclass(frozen=True)
class BedHost:
    """One hypervisor host of the bed."""

    name: str
    address: str
    dir: Path

    @property
    def netns(self) -> Path:
        return self.dir / "netns"

    @property
    def pid_files(self) -> tuple[Path, ...]:
        return tuple(self.dir / f"{d}.pid" for d in ("sshd", "libvirtd", "virtlogd"))

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"


@dataclass(frozen=True)
class HostBed:
    """The bed under `root`: its LAN, its client namespace and its hosts (h1, h2, ...)."""

    root: Path
    count: int = 2

    @property
    def hosts(self) -> tuple[BedHost, ...]:
        return tuple(BedHost(f"h{i}", f"{SUBNET}.{10 + i}", self.root / f"h{i}") for i in range(1, self.count + 1))

    @property
    def lan(self) -> Path:
        return self.root / "lan.netns"

    @property
    def client(self) -> Path:
        return self.root / "client.netns"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def uri(self, host: BedHost) -> str:
        return f"qemu+ssh://root@{host.address}/system?keyfile={self.client_key}"

    def hosts_block(self) -> dict[str, dict[str, str]]:
        """What an environment file's `hosts:` says to use the bed."""
        return {h.name: {"uri": f"qemu+ssh://root@{h.address}/system", "key": str(self.client_key),
                         "known_hosts": str(self.known_hosts)} for h in self.hosts}

    def in_client(self, argv: Sequence[Arg]) -> list[str]:
        """argv run in the client namespace, where vmctl sits on the bed's LAN."""
        return [which("nsenter", package="util-linux"), f"--net={self.client}", *(os.fspath(a) for a in argv)]


# ------------------------------------------------------------------------------------------------ up


def up(bed: HostBed) -> None:
    """Start the bed; on any failure, stop what was started."""
    try:
        bed.root.mkdir(parents=True, exist_ok=True)
        bed.root.chmod(0o700)
        _keygen(bed.client_key)
        _lan(bed)
        lines = []
        for host in bed.hosts:
            _prepare_host(bed, host)
            _launch(host)
            kind, blob = host.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{host.address} {kind} {blob}")
        bed.known_hosts.write_text("\n".join(lines) + "\n")
        for host in bed.hosts:
            _wait_ready(bed, host)
        _keep_capabilities(bed.hosts[0])
    except BaseException:
        down(bed)
        raise


def _keep_capabilities(host: BedHost) -> None:
    """Keep what a bed host's libvirtd learnt probing QEMU (seconds per emulator under TCG) for the
    next bed: a copy per host, never one folder two daemons write at once."""
    probed = host.dir / "var/cache/libvirt/qemu"
    if not CAPS_CACHE.is_dir() and probed.is_dir():
        CAPS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CAPS_CACHE.with_name(f".{CAPS_CACHE.name}.{os.getpid()}")
        shutil.copytree(probed, tmp)
        with contextlib.suppress(OSError):  # another bed was quicker
            tmp.rename(CAPS_CACHE)
        shutil.rmtree(tmp, ignore_errors=True)


def _keygen(path: Path) -> None:
    if not path.exists():
        run([which("ssh-keygen", package="openssh-client"), "-q", "-t", "ed25519", "-N", "", "-C", path.name,
             "-f", path], timeout=30)


def _netns(path: Path) -> None:
    if not _is_mountpoint(path):
        path.touch(mode=0o600)
        run([which("unshare", package="util-linux"), f"--net={path}", "true"], timeout=30)
        _ip_in(path, ["link set lo up"])


def _lan(bed: HostBed) -> None:
    """A bridge in the LAN namespace, and a veth from it to the client and to each host."""
    _netns(bed.lan)
    _ip_in(bed.lan, ["link add lan type bridge", "link set lan up"])
    ends = [(bed.client, CLIENT_ADDRESS, "vbc")] + [(h.netns, h.address, f"vb{h.name}") for h in bed.hosts]
    for ns, address, end in ends:
        if ns != bed.client:
            ns.parent.mkdir(exist_ok=True)
        _netns(ns)
        run([_ip(), "link", "add", end, "netns", bed.lan, "type", "veth", "peer", "name", "eth0",
             "netns", ns], timeout=30)
        _ip_in(bed.lan, [f"link set {end} master lan", f"link set {end} up"])
        _ip_in(ns, [f"addr add {address}/24 dev eth0", "link set eth0 up"])


def _prepare_host(bed: HostBed, host: BedHost) -> None:
    """The host's private folders, its libvirt configuration and its sshd's."""
    for sub in PRIVATE:
        (host.dir / sub).mkdir(parents=True, exist_ok=True)
    etc = host.dir / "etc/libvirt"
    shutil.rmtree(etc)
    # This machine's configuration, without its domains: a bed host starts empty, whatever this
    # machine's system libvirtd has defined (a test run killed mid-way leaves a definition there).
    shutil.copytree("/etc/libvirt", etc, symlinks=True, ignore=_domain_definitions)
    # No default NAT network on a bed host (it would start a dnsmasq for nothing), and a host UUID of
    # its own: libvirt refuses to migrate between two hosts with the same one.
    shutil.rmtree(etc / "qemu/networks/autostart", ignore_errors=True)
    with (etc / "libvirtd.conf").open("a") as f:
        f.write(f'\nhost_uuid = "{uuid.uuid5(uuid.NAMESPACE_URL, f"vmctl-hostbed-{host.name}")}"\n')
    _kvm_node(host.dir / "kvm")
    if CAPS_CACHE.is_dir():
        shutil.copytree(CAPS_CACHE, host.dir / "var/cache/libvirt/qemu", dirs_exist_ok=True)
    _keygen(host.host_key)
    (host.dir / "authorized_keys").write_text(bed.client_key.with_suffix(".pub").read_text())
    (host.dir / "sshd_config").write_text(sshd_config(host))


def _domain_definitions(folder: str, names: list[str]) -> set[str]:
    """For copytree: the domain definitions (and their autostart links) under /etc/libvirt/qemu."""
    if Path(folder) == Path("/etc/libvirt/qemu"):
        return {n for n in names if n.endswith(".xml") or n == "autostart"}
    return set()


def _kvm_node(path: Path) -> None:
    """/dev/kvm as a Debian server has it (0660 root:kvm, and QEMU's user is in group kvm), for the
    host's mount namespace. This machine's is 0600 root: a system libvirtd then finds KVM unusable for
    QEMU's user after every probe it ran as root, throws its capabilities away and probes QEMU again
    (seconds, three times per connection: libvirtd's log says `KVM was enabled when probing ..., but
    it is not available now`)."""
    if not path.exists():
        kvm = os.stat("/dev/kvm")
        os.mknod(path, 0o660 | stat.S_IFCHR, kvm.st_rdev)
        shutil.chown(path, "root", "kvm")
        path.chmod(0o660)


def sshd_config(host: BedHost) -> str:
    """Key-only root login, on the host's address only, nothing from the machine's own sshd config."""
    return "\n".join([
        f"ListenAddress {host.address}", f"HostKey {host.host_key}", f"PidFile {host.dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {host.dir / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no",  # the bed's files live under pytest's temp folders
        "AllowTcpForwarding yes", "X11Forwarding no", "PrintMotd no", "LogLevel ERROR",
        f"Subsystem sftp {'/usr/lib/openssh/sftp-server'}", "",
    ])


def _launch(host: BedHost) -> None:
    """Enter the host's network namespace, a new mount and UTS namespace, and start its daemons there:
    `inside` (below) runs in it, binds the private folders and daemonises virtlogd, libvirtd and sshd,
    which keep the namespaces alive."""
    run([which("nsenter", package="util-linux"), f"--net={host.netns}", which("unshare", package="util-linux"),
         "--mount", "--uts", "--propagation", "private", sys.executable, "-m", "bench.hostbed", "inside",
         str(host.dir), host.name], timeout=60, cwd=Path(__file__).resolve().parent.parent)


def inside(host_dir: Path, name: str) -> None:
    """Run in the host's own namespaces: bind its private folders, then start its daemons."""
    run([which("hostname"), name], timeout=10)
    # A /run of its own (sshd's privilege separation folder, libvirt's sockets, pid files), then the
    # host's private folders over the machine's.
    mount = which("mount", package="mount")
    run([mount, "-t", "tmpfs", "-o", "mode=0755,size=64m", "bed-run", "/run"], timeout=10)
    for sub in ("sshd", "libvirt", "lock"):
        (Path("/run") / sub).mkdir()
    run([mount, "--bind", host_dir / "kvm", "/dev/kvm"], timeout=10)
    for sub in PRIVATE:
        run([mount, "--bind", host_dir / sub, Path("/") / sub], timeout=10)
    run([which("virtlogd", package="libvirt-daemon-system"), "-d", "-p", host_dir / "virtlogd.pid"], timeout=30)
    # From one CPU, as vmctl opens its embedded driver (vmctl/hypervisor.py, on_one_cpu): kvm_pvm's
    # CPUID differs per CPU, and libvirt re-probes QEMU when it differs from its cache's. libvirt gives
    # each QEMU it starts every host CPU again (no <vcpu cpuset>).
    cpu = str(min(os.sched_getaffinity(0)))
    run([which("taskset", package="util-linux"), "-c", cpu, which("libvirtd", package="libvirt-daemon-system"),
         "-d", "-p", host_dir / "libvirtd.pid"], timeout=30)
    run([which("sshd", package="openssh-server"), "-f", host_dir / "sshd_config"], timeout=30)


def _wait_ready(bed: HostBed, host: BedHost, timeout: float = START_TIMEOUT) -> None:
    """Until the host's libvirtd answers through its sshd, as vmctl will reach it."""
    deadline = time.monotonic() + timeout
    argv = bed.in_client(client_ssh(bed, host, ["virsh", "-c", "qemu:///system", "version"]))
    while True:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=30)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"bed host {host.name} did not answer within {timeout:.0f} s: "
                               f"{proc.stderr.decode(errors='replace')[-400:]}")
        time.sleep(0.2)


def client_ssh(bed: HostBed, host: BedHost, argv: Sequence[str]) -> list[str]:
    """OpenSSH to a bed host, its key checked against the bed's known-hosts file."""
    return [which("ssh", package="openssh-client"), "-i", str(bed.client_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={bed.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{host.address}", *argv]


def kill(host: BedHost) -> None:
    """The host dies: every process in its namespaces (sshd, libvirtd, virtlogd, QEMUs) is SIGKILLed.
    Its folders stay, as a server's disk would."""
    for pid in processes_in(host.netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_SECONDS
    while any(not is_gone(p) for p in processes_in(host.netns)) and time.monotonic() < deadline:
        time.sleep(0.02)


def restart(bed: HostBed, host: BedHost) -> None:
    """The host boots again: its daemons start on the same folders (libvirt finds its defined domains)."""
    _launch(host)
    _wait_ready(bed, host)


# ------------------------------------------------------------------------------------------------ down


def down(bed: HostBed) -> list[str]:
    """Stop every process in the bed's namespaces (daemons, QEMU), and unmount and remove them.
    Returns what could not be removed (nothing, normally)."""
    for host in bed.hosts:
        for pid_file in host.pid_files:
            with contextlib.suppress(OSError, ValueError):
                _end(int(pid_file.read_text().strip()))
    namespaces = [h.netns for h in bed.hosts] + [bed.client, bed.lan]
    for ns in namespaces:
        for pid in processes_in(ns):
            _end(pid)
    for ns in namespaces:
        if _is_mountpoint(ns):
            run([which("umount", package="mount"), ns], check=False, timeout=30)
    return leftovers(bed)


def leftovers(bed: HostBed) -> list[str]:
    namespaces = [h.netns for h in bed.hosts] + [bed.client, bed.lan]
    found = [f"namespace {ns}" for ns in namespaces if _is_mountpoint(ns)]
    return found + [f"process {pid} in {ns}" for ns in namespaces for pid in processes_in(ns)]


processes_in = namespaces.processes_in
is_gone = namespaces.is_gone


def _end(pid: int) -> None:
    namespaces.end(pid, grace=STOP_SECONDS)


_is_mountpoint = namespaces.is_mountpoint


def _ip() -> str:
    return which("ip", package="iproute2")


def _ip_in(ns: Path, commands: Sequence[str]) -> None:
    run([which("nsenter", package="util-linux"), f"--net={ns}", _ip(), "-batch", "-"],
        input=("\n".join(commands) + "\n").encode(), timeout=30)


@contextlib.contextmanager
def running(root: Path, count: int = 2) -> Iterator[HostBed]:
    """The bed for the block; everything it started is gone afterwards."""
    bed = HostBed(root, count)
    up(bed)
    try:
        yield bed
    finally:
        left = down(bed)
        if left:
            raise RuntimeError(f"the host bed left things behind: {left}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("up", "down", "run"):
        p = sub.add_parser(verb)
        p.add_argument("dir", type=Path)
        p.add_argument("--hosts", type=int, default=2)
        if verb == "run":
            p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("inside")  # internal: the daemons' start inside a host's namespaces
    p.add_argument("dir", type=Path)
    p.add_argument("name")
    args = parser.parse_args(argv)
    if args.verb == "inside":
        inside(args.dir, args.name)
        return 0
    bed = HostBed(args.dir.resolve(), args.hosts)
    if args.verb == "up":
        up(bed)
        print(json.dumps({"hosts": bed.hosts_block(), "client_netns": str(bed.client)}, indent=2))
        return 0
    if args.verb == "down":
        left = down(bed)
        print("\n".join(left) or "the bed is down", file=sys.stderr)
        return 1 if left else 0
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    return subprocess.run(bed.in_client(command), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
