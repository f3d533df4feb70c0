"""`extends` in a service: the three forms, chains within and across files, cycles, compose's merge rules,
the keys that are not inherited, relative paths of another file, and where errors point."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_load import write
from vmctl.errors import SpecError
from vmctl.load import load_project
from vmctl.spec import load_environment


def services(folder: Path) -> dict:
    return load_project(cwd=folder, environ={}).data["services"]


def error(folder: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_project(cwd=folder, environ={})
    return info.value


def test_the_three_forms_and_the_merge_rules(tmp_path: Path) -> None:
    write(tmp_path, "common.yaml", "services:\n  other: {image: other.tar, user: '1'}\n")
    write(tmp_path, "compose.yaml", """
        services:
          base:
            image: base.tar
            command: [sh, -c, base]
            ports: ["80:80"]
            environment: [A=1, B=2]
          short: {extends: base}
          long:
            extends: {service: base}
            command: [sh, -c, long]
            ports: ["81:81"]
            environment: {B: "3"}
          file: {extends: {file: common.yaml, service: other}, user: "2"}
        """)
    found = services(tmp_path)
    assert found["short"] == found["base"]
    assert found["long"] == {"image": "base.tar", "command": ["sh", "-c", "long"], "ports": ["80:80", "81:81"],
                             "environment": {"A": "1", "B": "3"}}
    assert found["file"] == {"image": "other.tar", "user": "2"}
    assert "other" not in found  # only the extended service is taken from the other file


def test_chains_within_and_across_files(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    write(tmp_path, "lib/root.yaml", "services:\n  root: {image: root.tar, labels: {a: '1'}}\n")
    write(tmp_path, "lib/mid.yaml", """
        services:
          mid: {extends: {file: root.yaml, service: root}, labels: {b: '2'}}
        """)
    write(tmp_path, "compose.yaml", """
        services:
          web: {extends: top, labels: {d: '4'}}
          top: {extends: {file: lib/mid.yaml, service: mid}, labels: {c: '3'}}
        """)
    found = services(tmp_path)
    assert found["web"] == {"image": "root.tar", "labels": {"a": "1", "b": "2", "c": "3", "d": "4"}}
    assert found["top"]["labels"] == {"a": "1", "b": "2", "c": "3"}


def test_depends_on_volumes_from_and_links_are_not_inherited(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", """
        services:
          db: {image: db.tar}
          base: {image: x.tar, depends_on: [db], volumes_from: [db], links: [db], restart: always}
          web: {extends: base, depends_on: [base]}
        """)
    assert services(tmp_path)["web"] == {"image": "x.tar", "restart": "always", "depends_on": ["base"]}


def test_relative_paths_stay_relative_to_the_file_that_wrote_them(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "data").mkdir(parents=True)
    write(lib, "common.env", "FROM_LIB=yes\n")
    write(lib, "app.tar", "")
    write(lib, "common.yaml", """
        services:
          built: {build: ., env_file: common.env}
          mounted:
            image: app.tar
            build: {dockerfile: Dockerfile.dev}
            volumes: ["./data:/data:ro", "named:/named", {type: bind, source: ./data, target: /long}]
            env_file: [{path: common.env, required: false}]
        """)
    write(tmp_path, "own.env", "OWN=yes\n")
    write(tmp_path, "compose.yaml", """
        services:
          a: {extends: {file: lib/common.yaml, service: built}, env_file: own.env}
          b: {extends: {file: lib/common.yaml, service: mounted}, volumes: ["./mine:/mine"]}
        """)
    found = services(tmp_path)
    where = str(lib.resolve())
    assert found["a"]["build"] == where
    assert found["a"]["environment"] == {"FROM_LIB": "yes", "OWN": "yes"}  # env_file lists append
    assert found["b"]["image"] == f"{where}/app.tar"
    assert found["b"]["build"] == {"dockerfile": "Dockerfile.dev", "context": where}
    assert found["b"]["volumes"] == [f"{where}/data:/data:ro", "named:/named",
                                     {"type": "bind", "source": f"{where}/data", "target": "/long"},
                                     "./mine:/mine"]  # the extending file's own paths are the project's
    assert found["b"]["environment"] == {"FROM_LIB": "yes"}


def test_a_cycle_names_the_chain_file_line_and_key(tmp_path: Path) -> None:
    file = write(tmp_path, "compose.yaml", """
        services:
          a: {extends: b, image: x.tar}
          b: {extends: {service: c}}
          c:
            extends: a
        """)
    e = error(tmp_path)
    assert "`extends` cycle: a -> b -> c -> a" in e.message
    assert str(e.where) == f"{file}:5: `services.c.extends`"


def test_a_self_extension_and_a_cycle_across_files(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  a: {extends: a}\n")
    assert "cycle: a -> a" in error(tmp_path).message
    other = write(tmp_path, "other.yaml", "services:\n  b:\n    extends: {file: compose.yaml, service: a}\n")
    write(tmp_path, "compose.yaml", "services:\n  a: {extends: {file: other.yaml, service: b}}\n")
    e = error(tmp_path)
    assert "cycle: a -> b (`other.yaml`) -> a" in e.message
    assert str(e.where) == f"{other.resolve()}:3: `services.b.extends`"


@pytest.mark.parametrize(("extends", "message", "key"), [
    ("nope", "no service `nope` in", "services.web.extends"),
    ("{file: missing.yaml, service: x}", "`extends` file", "services.web.extends"),
    ("{servce: x}", "not `servce`", "services.web.extends"),
    ("{service: x, file: [a]}", "`extends.file` takes a path", "services.web.extends.file"),
])
def test_bad_extends_names_file_line_and_key(tmp_path: Path, extends: str, message: str, key: str) -> None:
    file = write(tmp_path, "compose.yaml", f"services:\n  web:\n    image: x.tar\n    extends: {extends}\n")
    e = error(tmp_path)
    assert message in e.message and e.hint
    assert e.where is not None and (e.where.file, e.where.line, e.where.key) == (str(file), 4, key)


def test_an_error_in_an_extended_file_names_that_file(tmp_path: Path) -> None:
    other = write(tmp_path, "other.yaml", "services:\n  base:\n    image: x.tar\n    mem_limit: lots\n")
    write(tmp_path, "compose.yaml", "services:\n  web: {extends: {file: other.yaml, service: base}}\n")
    with pytest.raises(SpecError) as info:
        load_environment(cwd=tmp_path, environ={})
    assert str(info.value.where) == f"{other.resolve()}:4: `services.web.mem_limit`"


def test_the_settings_table_accepts_a_resolved_extends(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", """
        services:
          base: {image: x.tar, isolation: container, labels: {tier: web}}
          web: {extends: base, user: "1000"}
        """)
    web = next(s for s in load_environment(cwd=tmp_path, environ={}).services if s.name == "web")
    assert (web.user, web.labels, web.isolation.value) == ("1000", (("tier", "web"),), "container")
