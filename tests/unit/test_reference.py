from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, SecretStr

from coalmine._exceptions import ConfigError
from coalmine.config.reference import COMMAND, NAME, Table, render_reference, tables
from coalmine.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``COALMINE_*`` variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("COALMINE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def reachable_models() -> list[type[BaseModel]]:
    """Settings and every model nested in it, found from the annotations alone."""
    found: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in found:
                return
            found.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for arg in get_args(annotation):
            visit(arg)

    visit(Settings)
    return found


def section(doc: str, table: Table) -> str:
    marker = f"\n{table.title}\n"
    assert marker in doc, f"no section {table.title!r} in the reference"
    start = doc.index(marker) + len(marker)
    end = doc.find("\n#", start)
    return doc[start : end if end != -1 else len(doc)]


def env_of(table_heading: str, key: str) -> str:
    """The environment variable the reference shows for ``key`` of a table."""
    for table in tables():
        if table.heading == table_heading:
            for candidate in table.keys:
                if candidate.name == key:
                    assert candidate.env is not None
                    return candidate.env.split("`")[1]
    raise AssertionError(f"{key} not in {table_heading}")


# -- the file --------------------------------------------------------------------------------


def test_docs_reference_md_is_generated_from_the_models() -> None:
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert actual == render_reference(), (
        f"docs/reference.md is out of date with the settings models; regenerate it: {COMMAND}"
    )


def test_the_reference_says_how_it_is_made() -> None:
    head = render_reference().splitlines()[:4]
    assert any(COMMAND in line and "do not edit by hand" in line for line in head)


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coalmine.config.reference"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout == render_reference()


# -- completeness ----------------------------------------------------------------------------


def test_every_field_of_every_model_is_documented() -> None:
    doc = render_reference()
    by_model: dict[type[BaseModel], list[Table]] = {}
    for table in tables():
        by_model.setdefault(table.model, []).append(table)
    models = reachable_models()
    assert len(models) >= 10  # Settings, its sections, profiles, metrics, inputs...
    for model in models:
        assert model in by_model, f"{model.__name__} has no table in the reference"
        for table in by_model[model]:
            keys = {key.name: key for key in table.keys}
            assert list(keys) == list(model.model_fields), table.heading
            text = section(doc, table)
            for name, key in keys.items():
                where = f"{model.__name__}.{name}"
                assert f"| `{name}` |" in text, f"{where} is not in its section"
                assert key.description.strip(), f"{where} has no description"
                assert "``" not in key.description, f"{where}: reST literal left over"
                assert key.type, where


def test_the_tables_every_configuration_has() -> None:
    headings = [table.heading for table in tables()]
    for expected in (
        "",
        "`[kafka]`",
        "`[bus]`",
        "`[mqtt]`",
        "`[topics]`",
        "`[http]`",
        "`[limits]`",
        "`[[inputs]]`",
        f"`[profiles.{NAME}]`",
        f"`[[profiles.{NAME}.metrics]]`",
    ):
        assert expected in headings


def test_types_defaults_and_constraints_are_readable() -> None:
    rows = {(table.heading, key.name): key for table in tables() for key in table.keys}
    interval = rows[f"`[profiles.{NAME}]`", "interval"]
    assert interval.type == "duration > 0s"
    assert interval.default == '`"1m"`'
    assert rows[f"`[profiles.{NAME}]`", "slo_period"].default == '`"30d"`'
    assert rows["`[kafka]`", "max_poll_records"].type == "integer > 0"
    assert rows["`[mqtt]`", "port"].type == "integer, 1 <= x <= 65535"
    assert rows["`[kafka]`", "sasl_password"].type == "secret"
    assert rows["`[kafka]`", "sasl_password"].default == "unset"
    assert rows["", "log_format"].type == "one of: `text` | `json`"
    assert rows[f"`[[profiles.{NAME}.metrics]]`", "name"].default == "required"
    assert rows[f"`[[profiles.{NAME}.metrics]]`", "name"].env is None


# -- environment variables -------------------------------------------------------------------


def test_shown_variables_override_their_keys(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(env_of("`[http]`", "port"), "9000")
    clean_env.setenv(env_of("", "log_format"), "json")
    profile_interval = env_of(f"`[profiles.{NAME}]`", "interval").replace("<NAME>", "DEFAULT")
    clean_env.setenv(profile_interval, "30s")
    clean_env.setenv(env_of("`[kafka]`", "sasl_password"), "hunter2")
    clean_env.setenv(env_of("`[bus]`", "consume"), '["kafka", "mqtt"]')

    settings = load_settings()

    assert settings.http.port == 9000
    assert settings.log_format == "json"
    assert settings.profiles["default"].interval == 30.0
    assert settings.kafka.sasl_password == SecretStr("hunter2")
    assert settings.bus.consume == ["kafka", "mqtt"]


def test_a_misspelt_variable_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    # What makes the test below meaningful: a name that is not a key is a problem.
    clean_env.setenv("COALMINE_HTTP__PORTT", "9000")
    with pytest.raises(ConfigError):
        load_settings()


def _shown_variables() -> list[Any]:
    shown = []
    for table in tables():
        for key in table.keys:
            if key.env is not None:
                name = key.env.split("`")[1].replace("<NAME>", "DEFAULT")
                path = tuple(name.removeprefix("COALMINE_").lower().split("__"))
                shown.append(pytest.param(name, path, id=name))
    return shown


def _as_env_value(value: Any) -> str | None:
    if value is None or isinstance(value, SecretStr):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return json.dumps({k: _plain(v) for k, v in value.items()})
    return json.dumps([_plain(v) for v in value])


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _value_at(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for part in path:
        if value is None:  # inside an optional table that is unset by default
            return None
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


@pytest.mark.parametrize(("name", "path"), _shown_variables())
def test_every_shown_variable_is_a_real_key(name: str, path: tuple[str, ...]) -> None:
    defaults = load_settings(None, {})
    text = _as_env_value(_value_at(defaults, path))
    if text is not None:
        # The default, given through the variable, loads to the same settings.
        assert load_settings(None, {name: text}) == defaults
        return
    # Unset by default: a value is taken, or refused for what it is, never as unknown.
    try:
        settings = load_settings(None, {name: "x"})
    except ConfigError as exc:
        for problem in exc.problems:
            assert "unknown key" not in problem.message, problem
    else:
        assert _value_at(settings, path) is not None
