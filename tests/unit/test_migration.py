"""What `migrate` copies to the target first (the read-only pool files of a domain, not its console) and
what the migration copies (the disks the guest writes to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import migration
from vmctl.errors import UsageError, VmctlError
from vmctl.lifecycle import Project
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import load_environment

XML = """<domain><os><kernel>/var/lib/libvirt/vmctl/sha256-aa.kernel</kernel>
<initrd>/var/lib/libvirt/vmctl/sha256-bb.initrd</initrd></os><devices>
<disk><source file="/var/lib/libvirt/vmctl/sha256-cc.ext4"/><target dev="vdb"/><readonly/></disk>
<disk><source file="/srv/other.raw"/><readonly/></disk>
<disk><source file="/var/lib/libvirt/vmctl/scratch-e.m.data.raw"/><target dev="vda"/></disk>
<serial type="file"><source path="/var/lib/libvirt/vmctl/console-vmctl-e-m.log"/></serial>
</devices></domain>"""


def test_pool_files_are_the_read_only_content_named_ones() -> None:
    assert migration.pool_files(XML) == ["/var/lib/libvirt/vmctl/sha256-aa.kernel",
                                         "/var/lib/libvirt/vmctl/sha256-bb.initrd",
                                         "/var/lib/libvirt/vmctl/sha256-cc.ext4"]


def test_the_disks_it_writes_to_are_copied_by_the_migration_itself() -> None:
    assert migration.written_disks(XML) == [("vda", "/var/lib/libvirt/vmctl/scratch-e.m.data.raw")]


def test_migrate_never_waits_for_an_up_that_holds_the_lock(tmp_path: Path) -> None:
    file = tmp_path / "vmctl.yaml"
    file.write_text("name: miglock\nhosts:\n  h1: {uri: 'qemu:///system'}\n  h2: {uri: 'qemu:///system'}\n"
                    "machines: {a: {host: h1}}\n")
    project = Project(env=load_environment(file), progress=Progress(quiet_renderer))
    with project.envdir.lock(), pytest.raises(VmctlError, match="busy"):
        migration.migrate(project, "a", "h2")
    with pytest.raises(UsageError, match="unknown host `h9`"):
        migration.migrate(project, "a", "h9")
