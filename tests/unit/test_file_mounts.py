"""compose's `secrets` and `configs`, from the file to the request: sources, targets, owners and modes, the
bytes in the bundle, and the errors (file, line, key) for what cannot work."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from vmctl.errors import VmctlError
from vmctl.guest_container import bundle_tar
from vmctl.oci_spec import ContainerRequest, FileData, file_name, make_config
from vmctl.spec import load_environment

FILE = """\
name: t
services:
  db:
    image: ./x.tar
    isolation: container
    secrets: [db_password, {source: token, target: tok, uid: "1000", gid: 10, mode: 0400}]
    configs: [app_conf, {source: app_conf, target: /etc/app.conf}]
secrets:
  db_password: {file: ./pw.txt}
  token: {environment: TOKEN}
configs:
  app_conf: {content: "a = 1\\n"}
"""


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> object:
    (tmp_path / "compose.yaml").write_text(text)
    (tmp_path / "pw.txt").write_text("s3cret\n")
    return load_environment(tmp_path / "compose.yaml", environ=environ or {"TOKEN": "t0k"})


def test_sources_targets_owners_and_modes(tmp_path: Path) -> None:
    env = _load(tmp_path, FILE)
    files = {m.target: (m.data(), m.uid, m.gid, oct(m.mode)) for m in env.service("db").files}  # type: ignore[attr-defined]
    assert files == {"/run/secrets/db_password": (b"s3cret\n", 0, 0, "0o444"),
                     "/run/secrets/tok": (b"t0k", 1000, 10, "0o400"),
                     "/app_conf": (b"a = 1\n", 0, 0, "0o444"), "/etc/app.conf": (b"a = 1\n", 0, 0, "0o444")}


def test_the_token_comes_from_dotenv_when_the_shell_has_none(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TOKEN=from-dotenv\n")
    env = _load(tmp_path, FILE, environ={"PATH": "/bin"})
    assert [m.data() for m in env.service("db").files if m.source == "token"] == [b"from-dotenv"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "message", "line"), [
    (("./pw.txt", "./nope.txt"), "secret file `./nope.txt` does not exist", 9),
    (("{environment: TOKEN}", "{environment: UNSET_VAR}"), "variable `UNSET_VAR` is not set", 10),
    (("{content: \"a = 1\\n\"}", "{content: x, file: ./pw.txt}"), "not file and content together", 12),
    (("{file: ./pw.txt}", "{external: true}"), "`external` is not supported", 9),
    (("[app_conf, ", "[app_cnf, "), "undeclared config `app_cnf`", 7),
    (("target: /etc/app.conf", "target: /app_conf"), "have the same target", 3),
])
def test_errors_name_the_file_line_and_key(tmp_path: Path, change: tuple[str, str], message: str, line: int) -> None:
    assert change[0] in FILE
    with pytest.raises(VmctlError) as info:
        _load(tmp_path, FILE.replace(*change))
    assert message in info.value.render() and info.value.where is not None
    assert (info.value.where.file, info.value.where.line) == (str(tmp_path / "compose.yaml"), line)


def test_the_files_are_bound_read_only_and_travel_with_the_bundle() -> None:
    req = ContainerRequest(name="db", args=("true",), env=(), cwd="/", user="", hostname="db", rootfs="/r",
                           etc_dir="/b/etc", files=(FileData("/run/secrets/pw", b"s3cret", 0o400, 1000, 10),))
    [mount] = [m for m in make_config(req)["mounts"] if m["destination"] == "/run/secrets/pw"]
    assert mount["source"] == f"/b/etc/{file_name(0)}" and "ro" in mount["options"]
    assert "s3cret" not in json.dumps(make_config(req)) and "s3cret" not in repr(req)
    with tarfile.open(fileobj=io.BytesIO(bundle_tar(req))) as tar:
        info = tar.getmember(f"etc/{file_name(0)}")
        assert (info.mode, info.uid, info.gid) == (0o400, 1000, 10)
        assert tar.extractfile(info).read() == b"s3cret"  # type: ignore[union-attr]
