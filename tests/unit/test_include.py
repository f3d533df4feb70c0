"""Top-level `include`: both forms, each entry a project of its own (its folder, its `.env`), names defined
twice, cycles, and errors inside an included file that name that file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_load import write
from vmctl.errors import SpecError
from vmctl.load import load_project
from vmctl.spec import load_environment


@pytest.fixture
def db_project(tmp_path: Path) -> Path:
    """`db/`: a compose project of its own, with its `.env`, an env file, a folder and an archive."""
    db = tmp_path / "db"
    (db / "data").mkdir(parents=True)
    write(db, ".env", "DB_TAG=from-db-env\nSHARED=from-db-env\n")
    write(db, "db.env", "PASSWORD=secret\nBARE_FROM_DB\n")
    write(db, "db.tar", "")
    write(db, "compose.yaml", """
        name: ignored
        services:
          db:
            image: db.tar
            labels: {tag: "${DB_TAG}", shared: "${SHARED}"}
            volumes: ["./data:/var/lib/db", "dbdata:/more"]
            env_file: db.env
            environment: [BARE_FROM_DB]
        networks: {back: {}}
        volumes: {dbdata: {}}
        """)
    return db


def test_a_path_entry_is_a_project_of_its_own(tmp_path: Path, db_project: Path) -> None:
    write(tmp_path, ".env", "SHARED=from-main-env\nBARE_FROM_DB=main\n")
    write(tmp_path, "compose.yaml", """
        include: [db/compose.yaml]
        services:
          web: {image: web.tar, depends_on: [db], networks: [back]}
        """)
    data = load_project(cwd=tmp_path, environ={}).data
    db = data["services"]["db"]
    here = str(db_project.resolve())
    assert sorted(data["services"]) == ["db", "web"] and data["networks"] == {"back": {}}
    assert data["volumes"] == {"dbdata": {}} and "include" not in data and data.get("name") is None
    assert db["labels"] == {"tag": "from-db-env", "shared": "from-main-env"}  # the including project wins
    assert db["image"] == f"{here}/db.tar" and db["volumes"] == [f"{here}/data:/var/lib/db", "dbdata:/more"]
    assert db["environment"] == {"PASSWORD": "secret", "BARE_FROM_DB": "main"}


def test_the_long_form_merges_paths_and_takes_its_env_file(tmp_path: Path, db_project: Path) -> None:
    write(db_project, "prod.yaml", "services:\n  db: {user: '999'}\n")
    write(tmp_path, "other.env", "DB_TAG=from-other\n")
    write(tmp_path, "compose.yaml", """
        include:
          - path: [db/compose.yaml, db/prod.yaml]
            project_directory: db
            env_file: other.env
        services:
          web: {image: web.tar}
        """)
    db = load_project(cwd=tmp_path, environ={}).data["services"]["db"]
    assert db["user"] == "999"
    assert db["labels"] == {"tag": "from-other", "shared": ""}  # `env_file` replaces db/.env


def test_a_name_defined_twice_names_both_places(tmp_path: Path, db_project: Path) -> None:
    main = write(tmp_path, "compose.yaml", "include: [db/compose.yaml]\nservices:\n  db: {image: mine.tar}\n")
    with pytest.raises(SpecError) as info:
        load_project(cwd=tmp_path, environ={})
    e = info.value
    assert str(e.where) == f"{main}:3: `services.db`" and e.hint
    assert f"included `{db_project / 'compose.yaml'}`:3" in e.message


def test_two_included_files_that_define_one_volume(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, "compose.yaml", f"services:\n  {name}: {{image: x.tar}}\nvolumes:\n  shared: {{}}\n")
    write(tmp_path, "compose.yaml", "include: [a/compose.yaml, b/compose.yaml]\n")
    with pytest.raises(SpecError, match="`volumes.shared` is defined both here") as info:
        load_project(cwd=tmp_path, environ={})
    assert info.value.where is not None and info.value.where.file.endswith("a/compose.yaml")


def test_an_include_cycle(tmp_path: Path) -> None:
    write(tmp_path, "other.yaml", "include: [compose.yaml]\nservices:\n  b: {image: x.tar}\n")
    write(tmp_path, "compose.yaml", "include: [other.yaml]\nservices:\n  a: {image: x.tar}\n")
    with pytest.raises(SpecError, match="`include` cycle: compose.yaml -> other.yaml -> compose.yaml") as info:
        load_project(cwd=tmp_path, environ={})
    assert info.value.where is not None and info.value.where.file.endswith("other.yaml")


@pytest.mark.parametrize(("entry", "message"), [
    ("[nope.yaml]", "included file"), ("other.yaml", "takes a list"), ("[{paht: x.yaml}]", "not `paht`"),
    ("[{env_file: x.env}]", "needs a `path`"), ("[{path: [1]}]", "paths are strings"),
])
def test_bad_entries_name_file_line_and_key(tmp_path: Path, entry: str, message: str) -> None:
    file = write(tmp_path, "compose.yaml", f"services:\n  web: {{image: x.tar}}\ninclude: {entry}\n")
    with pytest.raises(SpecError, match=message) as info:
        load_project(cwd=tmp_path, environ={})
    assert info.value.where is not None and (info.value.where.file, info.value.where.line) == (str(file), 3)
    assert info.value.where.key == "include"


def test_an_error_in_an_included_file_names_that_file(tmp_path: Path, db_project: Path) -> None:
    write(db_project, "compose.yaml", "services:\n  db:\n    image: x.tar\n    mem_limit: lots\n")
    write(tmp_path, "compose.yaml", "include: [db/compose.yaml]\n")
    with pytest.raises(SpecError) as info:
        load_environment(cwd=tmp_path, environ={})
    assert str(info.value.where) == f"{db_project / 'compose.yaml'}:4: `services.db.mem_limit`"


def test_extends_inside_an_included_project_and_dropped_keys(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    write(lib, "base.yaml", "services:\n  base: {image: x.tar, isolation: container}\n")
    write(lib, "compose.yaml", "machines: {m: {}}\nservices:\n  app: {extends: {file: base.yaml, service: base}}\n")
    write(tmp_path, "compose.yaml", "include: [lib/compose.yaml]\n")
    env = load_environment(cwd=tmp_path, environ={})
    assert [s.name for s in env.services] == ["app"] and env.machines == ()  # a host container: no VM
    assert any("`machines` of the included" in w for w in env.warnings)
