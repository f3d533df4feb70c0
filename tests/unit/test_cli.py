"""The CLI through its real entry point: help of every command, `render`, and `status --json` before `up`."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest

from tests.conftest import ROOT, run_vmctl
from vmctl.cli.main import COMMANDS, cli


def commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the root group loads its commands lazily: ask it, as click does
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            out += commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_the_lazy_command_table_names_every_command_module() -> None:
    modules = {p.stem.removeprefix("cmd_") for p in (ROOT / "vmctl" / "cli").glob("cmd_*.py")}
    assert set(COMMANDS) == modules and len(commands()) > len(COMMANDS)


def test_a_command_imports_only_what_it_uses() -> None:
    """`status` renders nothing and reports nothing: jinja2, invoke and compare's package stay unloaded."""
    probe = ("import sys\nfrom vmctl.cli.main import cli\ntry:\n    cli(['status', '--help'])\n"
             "except SystemExit:\n    pass\nunused = ('jinja2', 'invoke', 'vmctl.compare', 'vmctl.cli.cmd_up')\n"
             "print(sorted(m for m in unused if sys.modules.get(m)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.splitlines()[-1] == "[]", out


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    file = tmp_path / "proj" / "vmctl.yaml"
    file.parent.mkdir()
    file.write_text("name: clitest\nmachines:\n  a: {memory: 64M, ports: ['18090:80']}\n  b: {vcpus: 1}\n"
                    "services:\n  web: {image: x.tar}\n")
    return file


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "vmctl")
def test_help(path: tuple[str, ...]) -> None:
    """`--help` works without an environment file, and shows the command's own text."""
    result = run_vmctl("-f", "/nonexistent/vmctl.yaml", *path, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert result.stderr == ""


def test_version() -> None:
    result = run_vmctl("--version", timeout=60)
    assert result.returncode == 0 and "vmctl" in result.stdout


def test_status_json_before_up_shows_every_machine_absent(env_file: Path, tmp_path: Path) -> None:
    result = run_vmctl("-f", str(env_file), "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["environment"] == "clitest" and data["file"] == str(env_file)
    assert {m["name"]: m["state"] for m in data["machines"]} == {"a": "absent", "b": "absent", "web": "absent"}
    assert all(m["ssh"] is None and m["pid"] is None for m in data["machines"])
    assert not (tmp_path / "state" / "envs" / "clitest").exists(), "status must not create anything"


def test_status_table_before_up(env_file: Path) -> None:
    result = run_vmctl("-f", str(env_file), "status", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "SSH", "PORTS", "BOOT"]
    assert [line.split()[:2] for line in lines[1:]] == [["a", "absent"], ["b", "absent"], ["web", "absent"]]


def test_render_prints_one_domain_per_machine(env_file: Path, tmp_path: Path) -> None:
    result = run_vmctl("-f", str(env_file), "render", "a", "--accel", "tcg", timeout=60)
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout)
    assert root.findtext("name") == "vmctl-clitest-a" and root.get("type") == "qemu"
    assert root.findtext("memory") == "64"
    assert "hostfwd=tcp:127.0.0.1:18090-:80" in result.stdout
    every = run_vmctl("-f", str(env_file), "render", timeout=60)
    assert every.returncode == 0 and every.stdout.count("<domain ") == 3
    assert not (tmp_path / "state" / "envs" / "clitest" / "libvirt").exists(), "render must not touch libvirt"


def test_render_unknown_machine_is_a_usage_error(env_file: Path) -> None:
    result = run_vmctl("-f", str(env_file), "render", "zzz", timeout=60)
    assert result.returncode == 2 and "unknown machine `zzz`" in result.stderr
    assert "hint: machines: a, b, web" in result.stderr


def test_down_before_up_is_a_no_op(env_file: Path, tmp_path: Path) -> None:
    result = run_vmctl("-f", str(env_file), "down", timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "state" / "envs" / "clitest").exists()


def test_logs_before_up(env_file: Path) -> None:
    result = run_vmctl("-f", str(env_file), "logs", "a", timeout=60)
    assert result.returncode == 2 and "no console log yet" in result.stderr and "vmctl up" in result.stderr


@pytest.mark.parametrize("args", [("stop", "zzz"), ("start", "a", "zzz"), ("restart", "zzz"), ("ps", "zzz"),
                                  ("port", "zzz", "80"), ("images", "zzz")], ids=lambda a: a[0])
def test_service_verbs_name_the_known_services(env_file: Path, args: tuple[str, ...]) -> None:
    result = run_vmctl("-f", str(env_file), *args, timeout=60)
    assert result.returncode == 2 and "unknown service `" in result.stderr and "hint: services: web" in result.stderr


@pytest.mark.parametrize("args", [("stop", "-t", "-1"), ("port", "web", "0"),
                                  ("port", "web", "80", "--protocol", "sctp"),
                                  ("exec", "-e", "NOVALUE", "web", "--", "true"),
                                  ("exec", "-u", "nobody", "a", "--", "id")], ids=lambda a: " ".join(a))
def test_service_verbs_refuse_bad_flags(env_file: Path, args: tuple[str, ...]) -> None:
    result = run_vmctl("-f", str(env_file), *args, timeout=60)
    assert result.returncode == 2, result.stderr


def test_service_verbs_before_up(env_file: Path) -> None:
    ps = run_vmctl("-f", str(env_file), "ps", timeout=60)
    assert ps.returncode == 0 and ps.stdout.split() == ["NAME", "MACHINE", "ISOLATION", "STATE", "PORTS"]
    every = run_vmctl("-f", str(env_file), "ps", "-a", "--json", timeout=60)
    assert [(s["name"], s["state"]) for s in json.loads(every.stdout)["services"]] == [("web", "absent")]
    port = run_vmctl("-f", str(env_file), "port", "web", "80", timeout=60)
    assert port.returncode == 1 and "not up" in port.stderr
    start = run_vmctl("-f", str(env_file), "start", "web", timeout=60)
    assert start.returncode == 1 and "no container to start" in start.stderr and "vmctl up" in start.stderr
    stop = run_vmctl("-f", str(env_file), "stop", timeout=60)
    assert stop.returncode == 0 and "nothing was running" in stop.stderr
    images = run_vmctl("-f", str(env_file), "images", "--json", timeout=60)
    assert json.loads(images.stdout) == {"images": [{"service": "web", "image": "x.tar", "digest": None,
                                                     "size_bytes": None}]}
