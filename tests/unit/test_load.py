"""The loading stage: default names, override files, compose's merge rules, interpolation, `.env`,
`env_file:`, anchors and merge keys, profiles, and errors that name file, line, key and variable."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vmctl.errors import SpecError, UsageError
from vmctl.load import load_project
from vmctl.load.interpolate import InterpolationError, interpolate


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def web(model_data: dict) -> dict:
    return model_data["services"]["web"]


# ------------------------------------------------------------------------------------------------ interpolation

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("$SET", "value"), ("${SET}", "value"), ("a${SET}b", "avalueb"), ("$$SET", "$SET"), ("$$", "$"),
    ("${UNSET:-dflt}", "dflt"), ("${EMPTY:-dflt}", "dflt"), ("${EMPTY-dflt}", ""), ("${UNSET-dflt}", "dflt"),
    ("${SET:-dflt}", "value"), ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"),
    ("${UNSET:-${SET}}", "value"), ("${UNSET:-a-${UNSET2:-b}}", "a-b"), ("${SET:?boom}", "value"),
    ("${EMPTY?boom}", ""), ("no dollar", "no dollar"), ("$SET/${SET}", "value/value"),
])
def test_interpolation_forms(text: str, expected: str) -> None:
    assert interpolate(text, ENV.get).text == expected


def test_interpolation_reports_used_and_unset_variables() -> None:
    result = interpolate("${A}-${SET}-${B:-x}", ENV.get)
    assert result.used == ("A", "SET", "B") and result.unset == ("A",)


@pytest.mark.parametrize(("text", "variable", "message"), [
    ("${UNSET:?set it please}", "UNSET", "set it please"), ("${EMPTY:?}", "EMPTY", "is empty"),
    ("${UNSET?}", "UNSET", "is not set"), ("${SET", None, "unclosed"), ("$(id)", None, "invalid `$`"),
    ("${1x}", None, "invalid variable"), ("${SET:x}", "SET", "invalid variable"),
])
def test_interpolation_errors(text: str, variable: str | None, message: str) -> None:
    with pytest.raises(InterpolationError, match=message.replace("$", r"\$")) as info:
        interpolate(text, ENV.get)
    assert info.value.variable == variable and info.value.hint


# ------------------------------------------------------------------------------------------------ files


def test_default_names_in_compose_order(tmp_path: Path) -> None:
    for name in ("vmctl.yaml", "docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"):
        write(tmp_path, name, f"name: {name.replace('.', '-')}\n")
        model = load_project(cwd=tmp_path, environ={})
        assert model.file.name == name  # the most compose-like name present wins
    assert any("using `compose.yaml`" in w for w in model.warnings)


def test_no_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="compose.yaml"):
        load_project(cwd=tmp_path, environ={})


def test_override_file_is_merged_by_default_and_compose_file_variable(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web: {image: a.tar}\n")
    write(tmp_path, "compose.override.yaml", "services:\n  web: {image: b.tar}\n")
    assert web(load_project(cwd=tmp_path, environ={}).data)["image"] == "b.tar"
    write(tmp_path, "other.yaml", "services:\n  web: {image: c.tar}\n")
    assert web(load_project(cwd=tmp_path, environ={"COMPOSE_FILE": "compose.yaml:other.yaml"}).data)["image"] == "c.tar"


def test_merge_rules(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", """
        services:
          web:
            image: a.tar
            command: [sh, -c, "echo a"]
            ports: ["8080:80", "9000:90"]
            volumes: ["./a:/data", "./logs:/logs"]
            environment: [A=1, B=2]
            labels: {tier: web}
            cap_add: [NET_ADMIN]
            healthcheck: {test: [CMD, "true"], retries: 3}
            depends_on: [db]
        """)
    write(tmp_path, "b.yaml", """
        services:
          web:
            command: [sh, -c, "echo b"]
            ports: ["127.0.0.1:9000:90", "8080:80"]
            volumes: ["./b:/data"]
            environment: {B: "3", C: "4"}
            labels: [owner=me]
            cap_add: [SYS_TIME]
            healthcheck: {test: [CMD, "false"]}
            depends_on: {cache: {condition: service_started}}
          db: {image: db.tar}
        """)
    data = load_project([tmp_path / "a.yaml", tmp_path / "b.yaml"], cwd=tmp_path, environ={}).data
    w = web(data)
    assert w["command"] == ["sh", "-c", "echo b"]  # replaced, not appended
    assert w["ports"] == ["8080:80", "9000:90", "127.0.0.1:9000:90"]  # unique by (ip, target, published, proto)
    assert w["volumes"] == ["./b:/data", "./logs:/logs"]  # unique by target
    assert w["environment"] == {"A": "1", "B": "3", "C": "4"}  # list and mapping merge key by key
    assert w["labels"] == {"tier": "web", "owner": "me"}
    assert w["cap_add"] == ["NET_ADMIN", "SYS_TIME"]  # other sequences append
    assert w["healthcheck"] == {"test": ["CMD", "false"], "retries": 3}
    assert w["depends_on"] == {"db": {"condition": "service_started"}, "cache": {"condition": "service_started"}}
    assert data["services"]["db"] == {"image": "db.tar"}


def test_lines_follow_the_file_that_set_a_key(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "services:\n  web:\n    image: a.tar\n    ports: ['1:1']\n")
    b = write(tmp_path, "b.yaml", "services:\n  web:\n\n    ports: ['2:2']\n    image: b.tar\n")
    model = load_project([a, b], cwd=tmp_path, environ={})
    assert str(model.where(("services", "web", "image"))) == f"{b.resolve()}:5: `services.web.image`"
    assert model.where(("services", "web", "ports", 0)).file == str(a.resolve())
    assert model.where(("services", "web", "ports", 1)).line == 4


def test_dotenv_and_process_environment(tmp_path: Path) -> None:
    write(tmp_path, ".env", """
        # comment
        TAG=1.0
        export NAME='literal ${TAG}'
        QUOTED="a\\tb ${TAG}"
        PORT=8080 # trailing comment
        """)
    write(tmp_path, "compose.yaml", """
        services:
          web:
            image: ./web-${TAG}.tar
            environment: {N: "${NAME}", Q: "${QUOTED}", P: "$PORT", O: "${OVER}"}
        """)
    data = load_project(cwd=tmp_path, environ={"OVER": "shell", "TAG": "2.0"}).data
    assert web(data)["image"] == "./web-2.0.tar"  # the shell wins over .env
    assert web(data)["environment"] == {"N": "literal ${TAG}", "Q": "a\tb 1.0", "P": "8080", "O": "shell"}


def test_unset_variable_warns_and_is_empty(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x${NOPE}.tar\n")
    model = load_project(cwd=tmp_path, environ={})
    assert web(model.data)["image"] == "x.tar"
    assert any("`NOPE` is not set" in w and "services.web.image" in w for w in model.warnings)


def test_required_variable_error_names_file_line_key_and_variable(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x.tar\n    user: ${APP_USER:?who runs it}\n")
    with pytest.raises(SpecError) as info:
        load_project(cwd=tmp_path, environ={})
    text = info.value.render()
    assert "compose.yaml:4: `services.web.user` (from `${APP_USER}`)" in text and "who runs it" in text


def test_env_file_forms_and_precedence(tmp_path: Path) -> None:
    write(tmp_path, "common.env", "A=common\nB=common\nFROM_SHELL\n")
    write(tmp_path, "web.env", "B=web\n")
    write(tmp_path, "compose.yaml", """
        services:
          web:
            image: x.tar
            env_file: [common.env, {path: web.env}, {path: missing.env, required: false}]
            environment: [C=own, B]
          db: {image: y.tar, env_file: web.env}
        """)
    model = load_project(cwd=tmp_path, environ={"FROM_SHELL": "sh", "B": "shell-b"})
    assert web(model.data)["environment"] == {"A": "common", "B": "shell-b", "FROM_SHELL": "sh", "C": "own"}
    assert "env_file" not in web(model.data)
    assert model.data["services"]["db"]["environment"] == {"B": "web"}
    assert model.where(("services", "web", "environment", "A")).file == str((tmp_path / "common.env").resolve())


def test_label_file_is_read_into_labels_which_win(tmp_path: Path) -> None:
    write(tmp_path, "app.labels", "# labels\ncom.example.tier=backend\ncom.example.team=${TEAM:-core}\nbare\n")
    write(tmp_path, "compose.yaml", """
        services:
          web:
            image: x.tar
            label_file: [app.labels, {path: missing.labels, required: false}]
            labels: {com.example.team: web}
        """)
    model = load_project(cwd=tmp_path, environ={})
    assert web(model.data)["labels"] == {"com.example.tier": "backend", "com.example.team": "web", "bare": None}
    assert "label_file" not in web(model.data)
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x.tar\n    label_file: nope.labels\n")
    with pytest.raises(SpecError, match="label file `nope.labels` does not exist") as info:
        load_project(cwd=tmp_path, environ={})
    where = info.value.where
    assert where is not None and (where.line, where.key) == (4, "services.web.label_file")


def test_missing_required_env_file(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x.tar\n    env_file: nope.env\n")
    with pytest.raises(SpecError, match="env file `nope.env` does not exist") as info:
        load_project(cwd=tmp_path, environ={})
    assert info.value.where is not None and info.value.where.line == 4


def test_anchors_and_merge_keys_keep_lines(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", """
        x-base: &base
          image: base.tar
          restart: always
        x-env: &env
          environment: {A: "1"}
        services:
          web:
            <<: [*base, *env]
            restart: "no"
        """)
    model = load_project(cwd=tmp_path, environ={})
    assert web(model.data) == {"restart": "no", "image": "base.tar", "environment": {"A": "1"}}
    assert model.where(("services", "web", "image")).line == 2  # where the anchor defines it
    assert model.where(("services", "web", "restart")).line == 9


def test_profiles(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", """
        services:
          web: {image: x.tar}
          debug: {image: y.tar, profiles: [debug]}
          tools: {image: z.tar, profiles: [tools, debug]}
        """)
    def names(**kw: object) -> list[str]:
        return sorted(load_project(cwd=tmp_path, **kw).data["services"])  # type: ignore[arg-type]
    assert names(environ={}) == ["web"]
    assert names(environ={}, profiles=["tools"]) == ["tools", "web"]
    assert names(environ={"COMPOSE_PROFILES": "debug"}) == ["debug", "tools", "web"]
    assert names(environ={}, profiles=["*"]) == ["debug", "tools", "web"]


def test_project_name_from_flag_then_environment(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "name: file\nservices: {}\n")
    environ = {"COMPOSE_PROJECT_NAME": "env"}
    assert load_project(cwd=tmp_path, environ=environ).project_name == "env"
    assert load_project(cwd=tmp_path, environ=environ, project_name="flag").project_name == "flag"
    assert load_project(cwd=tmp_path, environ={}).project_name is None


def test_env_file_long_form_refuses_unknown_keys(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x.tar\n    env_file: [{path: a.env, format: raw}]\n")
    with pytest.raises(SpecError, match="not `format`"):
        load_project(cwd=tmp_path, environ={})


def test_spec_errors_in_interpolated_values_name_the_variable(tmp_path: Path) -> None:
    from vmctl.spec import load_environment

    write(tmp_path, ".env", "MEM=lots\n")
    write(tmp_path, "compose.yaml", "services:\n  web:\n    image: x.tar\n    mem_limit: ${MEM}\n")
    with pytest.raises(SpecError) as info:
        load_environment(cwd=tmp_path, environ={})
    assert str(info.value.where).endswith("compose.yaml:4: `services.web.mem_limit` (from `${MEM}`)")


# ------------------------------------------------------------------------------------------------ --env-file


def test_env_files_replace_dotenv_and_later_files_win(tmp_path: Path) -> None:
    write(tmp_path, ".env", "TAG=dotenv\nONLY_DOTENV=yes\n")
    write(tmp_path, "a.env", "TAG=a\nA=from-a\n")
    write(tmp_path, "b.env", "TAG=b\nB=${A}-seen\n")
    write(tmp_path, "compose.yaml", """
        services:
          web:
            image: x.tar
            environment: {T: "${TAG}", A: "${A}", B: "${B}", D: "${ONLY_DOTENV:-unset}", S: "${SHELL_ONLY}"}
        """)
    model = load_project(cwd=tmp_path, environ={"SHELL_ONLY": "sh"}, env_files=[Path("a.env"), Path("b.env")])
    assert web(model.data)["environment"] == {"T": "b", "A": "from-a", "B": "from-a-seen", "D": "unset", "S": "sh"}
    shell = load_project(cwd=tmp_path, environ={"TAG": "shell"}, env_files=[Path("a.env")])
    assert web(shell.data)["environment"]["T"] == "shell"  # the process environment still wins


def test_missing_env_file_names_the_flag(tmp_path: Path) -> None:
    write(tmp_path, "compose.yaml", "services:\n  web: {image: x.tar}\n")
    with pytest.raises(UsageError, match="--env-file"):
        load_project(cwd=tmp_path, environ={}, env_files=[Path("nope.env")])


def test_compose_settings_from_dotenv(tmp_path: Path) -> None:
    """compose reads COMPOSE_FILE, COMPOSE_PROJECT_NAME and COMPOSE_PROFILES from `.env` as well; the
    process environment wins over it."""
    write(tmp_path, "compose.yaml", """
        name: file
        services:
          web: {image: a.tar}
          debug: {image: d.tar, profiles: [debug]}
        """)
    write(tmp_path, "prod.yaml", "services:\n  web: {image: p.tar}\n")
    write(tmp_path, ".env", "COMPOSE_FILE=compose.yaml:prod.yaml\nCOMPOSE_PROJECT_NAME=dotenv\n"
                            "COMPOSE_PROFILES=debug\n")
    model = load_project(cwd=tmp_path, environ={})
    assert [f.name for f in model.files] == ["compose.yaml", "prod.yaml"] and web(model.data)["image"] == "p.tar"
    assert model.project_name == "dotenv" and sorted(model.data["services"]) == ["debug", "web"]
    shell = {"COMPOSE_FILE": "compose.yaml", "COMPOSE_PROJECT_NAME": "shell", "COMPOSE_PROFILES": ""}
    model = load_project(cwd=tmp_path, environ=shell)
    assert web(model.data)["image"] == "a.tar" and model.project_name == "shell"
    assert sorted(model.data["services"]) == ["web"]
