"""The test bed itself: each host answers libvirt over SSH with its own daemon, its host key pinned;
an unknown key is refused; its addresses exist only inside the bed; nothing is left afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import hostbed

pytestmark = [pytest.mark.daemon]

PROBE = """\
import sys, libvirt
libvirt.registerErrorHandler(lambda c, e: None, None)
try:
    conn = libvirt.open(sys.argv[1])
except libvirt.libvirtError as e:
    print("refused:", e.get_error_message())
    sys.exit(3)
dom = next(iter(conn.listAllDomains()), None)
# replies of several KiB: the capabilities, a domain's XML (libvirt 9.0's libssh transport hangs on them)
print(conn.getHostname(), len(conn.getCapabilities()), len(dom.XMLDesc(0)) if dom else 0)
"""


def _open(bed: hostbed.HostBed, uri: str) -> subprocess.CompletedProcess[str]:
    import sys
    return subprocess.run(bed.in_client([sys.executable, "-c", PROBE, uri]), capture_output=True, text=True,
                          timeout=60, check=False)


def _libssh(bed: hostbed.HostBed, host: hostbed.BedHost, known_hosts: Path) -> str:
    return (f"qemu+libssh2://root@{host.address}/system?keyfile={bed.client_key}&known_hosts={known_hosts}"
            "&sshauth=privkey")


def test_each_host_is_its_own_libvirt(bed: hostbed.HostBed) -> None:
    for host in bed.hosts:
        proc = _open(bed, _libssh(bed, host, bed.known_hosts))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.split()[0] == host.name and int(proc.stdout.split()[1]) > 4096


def test_an_unknown_host_key_is_refused(bed: hostbed.HostBed, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(bed.known_hosts.read_text().splitlines()[1] + "\n")  # h2's line only
    proc = _open(bed, _libssh(bed, bed.hosts[0], other))
    assert proc.returncode == 3 and "host key" in proc.stdout, proc.stdout
    wrong = tmp_path / "wrong"  # h1's address with h2's key
    wrong.write_text(other.read_text().replace(bed.hosts[1].address, bed.hosts[0].address))
    proc = _open(bed, _libssh(bed, bed.hosts[0], wrong))
    assert proc.returncode == 3 and "HOST KEY VERIFICATION FAILED" in proc.stdout, proc.stdout


def test_the_openssh_transport_does_not_take_the_known_hosts_file(bed: hostbed.HostBed) -> None:
    """Why vmctl uses libvirt's libssh2 transport: `qemu+ssh` (the ssh binary) ignores `known_hosts=`
    in libvirt 9.0 and asks the user's own known-hosts file, which does not know the host."""
    host = bed.hosts[0]
    proc = _open(bed, f"qemu+ssh://root@{host.address}/system?keyfile={bed.client_key}"
                      f"&known_hosts={bed.known_hosts}")
    assert proc.returncode == 3 and "Host key verification failed" in proc.stdout, proc.stdout


def test_bed_addresses_exist_only_inside_the_bed(bed: hostbed.HostBed) -> None:
    host_ns = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert hostbed.SUBNET not in host_ns
    client = subprocess.run(bed.in_client(["ip", "-o", "addr"]), capture_output=True, text=True, check=True).stdout
    assert hostbed.CLIENT_ADDRESS in client


def test_down_leaves_nothing(tmp_path: Path) -> None:
    other = hostbed.HostBed(tmp_path / "bed", count=1)
    hostbed.up(other)
    daemons = [int(p.read_text()) for p in other.hosts[0].pid_files]
    assert hostbed.down(other) == []
    assert not [pid for pid in daemons if not hostbed.is_gone(pid)]  # a reparented daemon's zombie may linger
