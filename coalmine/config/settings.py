"""The whole configuration: a TOML file, ``COALMINE_*`` environment overrides, defaults.

Sources, highest priority first: keyword arguments to ``Settings(...)``, environment
variables ``COALMINE_<SECTION>__<KEY>``, the TOML file, the defaults. ``load_settings``
reads them all and raises one ``ConfigError`` listing every problem it found, each with
where it came from (the file or ``environment``) and the key it concerns.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from coalmine._exceptions import ConfigError, ConfigProblem
from coalmine.config.actions import Actions
from coalmine.config.models import (
    DEFAULT_PROFILE,
    BusSettings,
    HttpSettings,
    KafkaSettings,
    LimitSettings,
    MqttSettings,
    Profile,
    TopicsSettings,
)
from coalmine.formats.mapping import InputSettings

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

ENV_PREFIX = "COALMINE_"
"""Every environment variable coalmine reads starts with this."""

ENV_DELIMITER = "__"
"""Separates section and key in an environment variable name."""

CONFIG_ENV = "COALMINE_CONFIG"
"""The environment variable naming the TOML file when no path is given."""

ENVIRONMENT = "environment"
"""``ConfigProblem.source`` of a problem caused by an environment variable."""

_NO_DEFAULT_PROFILE = (
    'no "default" profile: deploy events that name no profile are analysed with'
    ' "default"; add [profiles.default]'
)
_SECRET_HINTS = ("password", "secret", "token")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

Loc = tuple[str | int, ...]


class Settings(BaseSettings):
    """Everything coalmine is configured with; immutable once loaded.

    Attributes:
        kafka: How to reach the Kafka cluster.
        bus: Which buses (Kafka, MQTT or both) input is read from and output published to.
        mqtt: How to reach the MQTT broker.
        topics: Names of the four topics of the wire contract.
        http: The ``/metrics``, ``/livez``, ``/readyz`` endpoint.
        limits: Memory caps.
        inputs: Extra metric topics in other formats (OTLP JSON, prometheus-kafka-adapter),
            each with a declarative mapping of its series to profile metrics.
        profiles: Analysis profiles by name; ``"default"`` must exist.
        log_level: Root log level.
        log_format: ``text`` for people, ``json`` (one object a line) for log shippers.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    topics: TopicsSettings = Field(default_factory=TopicsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    inputs: tuple[InputSettings, ...] = ()
    actions: Actions = ()
    profiles: dict[str, Profile] = Field(default_factory=lambda: {"default": DEFAULT_PROFILE})
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("profiles")
    @classmethod
    def _has_default(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        if "default" not in value:
            raise ValueError(_NO_DEFAULT_PROFILE)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment, then the TOML file (via ``load_settings``).

        Constructed directly, ``Settings(...)`` reads ``os.environ`` and no file;
        ``load_settings`` substitutes its own environment and file for the call.
        """
        del dotenv_settings, file_secret_settings  # not used: one file, one environment
        layers = _LAYERS.get()
        if layers is None:
            return (init_settings, env_settings, _FileSource(settings_cls, {}))
        return (init_settings, *layers)

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        cap = self.limits.max_metrics_per_deployment
        over = [name for name, p in self.profiles.items() if len(p.metrics) > cap]
        if over:
            msg = (
                f"profiles {', '.join(over)} define more metrics than"
                f" limits.max_metrics_per_deployment ({cap})"
            )
            raise ValueError(msg)
        return self

    def profile(self, name: str | None = None) -> Profile | None:
        """The profile called ``name`` (``"default"`` when ``None``), if configured."""
        return self.profiles.get(name or "default")


class _MappingEnvSource(EnvSettingsSource):
    """``EnvSettingsSource`` reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._environ)
        return {name.lower(): value for name, value in self._environ.items()}


class _FileSource(PydanticBaseSettingsSource):
    """The parsed TOML file, the lowest-priority layer above the defaults.

    When neither the file nor the keyword arguments define ``profiles``, the built-in
    default profile is laid down here so environment variables can override single keys
    of it (``COALMINE_PROFILES__DEFAULT__INTERVAL=30s``) without redefining it.
    """

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Return the file's value for ``field_name`` (unused: ``__call__`` is overridden)."""
        del field
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return the file's values, with the default profile when none is configured."""
        data = dict(self._data)
        from_init = self.settings_sources_data.get("InitSettingsSource", {})
        if "profiles" not in data and "profiles" not in from_init:
            data["profiles"] = {"default": DEFAULT_PROFILE.model_dump()}
        return data


_LAYERS: ContextVar[tuple[PydanticBaseSettingsSource, ...] | None] = ContextVar(
    "coalmine_settings_layers", default=None
)


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the configuration from a TOML file and environment variables.

    Args:
        path: The TOML file. ``None`` means ``environ["COALMINE_CONFIG"]`` if that is set
            and not empty, else no file (defaults and environment only).
        environ: The environment to read ``COALMINE_*`` overrides from; ``os.environ``
            when ``None``.

    Returns:
        The validated, immutable settings.

    Raises:
        ConfigError: With one ``ConfigProblem`` for every problem found: unreadable file,
            TOML syntax, unknown keys, wrong types or values, inconsistent profiles, bad
            environment variables.
    """
    env = dict(os.environ if environ is None else environ)
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    source = str(path) if path is not None else None

    problems: list[ConfigProblem] = []
    file_data: dict[str, Any] = {}
    if path is not None:
        file_data, file_problem = _read_toml(Path(path))
        if file_problem is not None:
            problems.append(file_problem)

    env_paths, env_problems, usable = _scan_environment(env)
    problems.extend(env_problems)
    env_source = _MappingEnvSource(Settings, usable)
    file_source = _FileSource(Settings, file_data)
    merged = _deep_merge(file_source(), env_source())
    origin = _Origin(source, file_data, env_paths)

    profiles = merged.get("profiles")
    if isinstance(profiles, dict) and "default" not in profiles:
        problems.append(origin.problem(("profiles",), _NO_DEFAULT_PROFILE))

    settings: Settings | None = None
    token = _LAYERS.set((env_source, file_source))
    try:
        settings = Settings()
    except ValidationError as exc:
        problems.extend(_from_validation_error(exc, origin, merged))
    finally:
        _LAYERS.reset(token)
    if problems or settings is None:
        # The same problem can be found twice (the "default" profile check runs on the raw
        # values and again in ``Settings``); report it once.
        raise ConfigError(list(dict.fromkeys(problems)))
    return settings


def _read_toml(path: Path) -> tuple[dict[str, Any], ConfigProblem | None]:
    """Parse ``path``; return its data, or ``{}`` and the problem that stopped it."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, ConfigProblem(source, "", "file not found")
    except IsADirectoryError:
        return {}, ConfigProblem(source, "", "is a directory, not a TOML file")
    except OSError as exc:
        return {}, ConfigProblem(source, "", f"cannot read the file: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, ConfigProblem(source, "", f"not UTF-8 text (bad byte at offset {exc.start})")
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        key = ""
        if match:
            key = f"line {match.group(1)}, column {match.group(2)}"
            message = message[: match.start()]
        return {}, ConfigProblem(source, key, f"TOML syntax error: {message}")


def _scan_environment(
    environ: Mapping[str, str],
) -> tuple[dict[tuple[str, ...], str], list[ConfigProblem], dict[str, str]]:
    """Find the ``COALMINE_*`` variables that configure something.

    Returns:
        The key path each usable variable sets (lower case) mapped to the variable's
        name, the problems found (unknown sections, values that are not valid JSON where
        JSON is needed), and the usable variables.
    """
    paths: dict[tuple[str, ...], str] = {}
    problems: list[ConfigProblem] = []
    usable: dict[str, str] = {}
    sections = list(Settings.model_fields)
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        if path[0] not in sections:
            problem = _unknown_env_section(name, path, sections)
            if problem is not None:
                problems.append(problem)
            continue
        if "" in path:
            problems.append(ConfigProblem(ENVIRONMENT, name, "empty key in the variable name"))
            continue
        try:
            _MappingEnvSource(Settings, {name: value})()
        except SettingsError as exc:
            reason = exc.__cause__ if exc.__cause__ is not None else exc
            message = f"a table or list value must be written as JSON ({reason})"
            problems.append(ConfigProblem(ENVIRONMENT, name, message))
            continue
        paths[path] = name
        usable[name] = value
    return paths, problems, usable


def _unknown_env_section(
    name: str, path: tuple[str, ...], sections: list[str]
) -> ConfigProblem | None:
    """The problem with a ``COALMINE_*`` variable that names no section, if it looks meant."""
    head = path[0]
    if len(path) > 1:
        message = f"unknown key {head!r}{_did_you_mean(head, sections)}"
        return ConfigProblem(ENVIRONMENT, name, message)
    for section in sections:
        table = _model_in(Settings.model_fields[section].annotation) or section == "profiles"
        if table and head.startswith(section + "_"):
            rest = name[len(ENV_PREFIX) + len(section) + 1 :]
            fixed = f"{ENV_PREFIX}{section.upper()}{ENV_DELIMITER}{rest.upper()}"
            message = f"unknown key: section and key are separated by '__', e.g. {fixed}"
            return ConfigProblem(ENVIRONMENT, name, message)
    return None  # other COALMINE_* variables (e.g. for tools) are none of our business


class _Origin:
    """Decides whether a problem at a key path came from the file or the environment."""

    def __init__(
        self,
        file_label: str | None,
        file_data: Mapping[str, Any],
        env_paths: Mapping[tuple[str, ...], str],
    ) -> None:
        self.file_label = file_label
        self.file_data = file_data
        self.env_paths = env_paths

    def problem(self, loc: Loc, message: str, *, missing: bool = False) -> ConfigProblem:
        """A ``ConfigProblem`` for ``message`` at ``loc``, attributed to its source.

        Args:
            loc: The key path of the problem.
            message: What is wrong.
            missing: The key at ``loc`` is absent (look at its parent for the source).
        """
        named = tuple(str(part) for part in loc)
        for env_path, var in sorted(self.env_paths.items(), key=lambda item: -len(item[0])):
            if named[: len(env_path)] == env_path:
                rest = loc[len(env_path) :]
                if rest:
                    message = f"{_dotted(rest)}: {message}"
                return ConfigProblem(ENVIRONMENT, var, message)
        look = loc[:-1] if missing else loc
        in_file = _depth(self.file_data, look)
        in_env = max((_common(named, p) for p in self.env_paths), default=0)
        if self.file_label is not None and (in_file >= in_env or in_file == len(look)):
            return ConfigProblem(self.file_label, _dotted(loc), message)
        if in_env:
            var = ENV_PREFIX + ENV_DELIMITER.join(part.upper() for part in named)
            return ConfigProblem(ENVIRONMENT, var, message)
        return ConfigProblem(self.file_label or "settings", _dotted(loc), message)


def _from_validation_error(
    exc: ValidationError, origin: _Origin, merged: Mapping[str, Any]
) -> list[ConfigProblem]:
    """Turn pydantic's errors into ``ConfigProblem``s with readable keys and messages."""
    errors = exc.errors(include_url=False)
    locs = [tuple(error["loc"]) for error in errors]
    problems = []
    for error, loc in zip(errors, locs, strict=True):
        kind = error["type"]
        if kind == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # "at least 1 item" only because the items themselves were invalid
        message = _message(error, loc)
        name = _metric_name(merged, loc)
        if name is not None:
            message = f"{message} (metric {name!r})"
        problems.append(origin.problem(loc, message, missing=kind == "missing"))
    return problems


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    """A human message for one pydantic error; never shows a secret's value."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key" + _did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = error.get("input")
    secret = any(hint in str(part).lower() for part in loc for hint in _SECRET_HINTS)
    if kind not in {"value_error", "assertion_error"} and not secret and _is_scalar(value):
        shown = repr(value)
        if len(shown) <= 60:
            message = f"{message} (got {shown})"
    return message


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def _known_keys(loc: Loc) -> list[str]:
    """The keys the table at ``loc`` accepts (empty if ``loc`` is no model)."""
    annotation: Any = Settings
    for part in loc:
        model = _model_in(annotation)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            continue
        origin = get_origin(annotation)
        if origin is dict or origin is tuple or origin is list:
            annotation = get_args(annotation)[-1 if origin is dict else 0]
            continue
        return []
    model = _model_in(annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class ``annotation`` is, or is optional of."""
    if get_origin(annotation) in {Union, UnionType}:
        options = [a for a in get_args(annotation) if a is not NoneType]
        annotation = options[0] if len(options) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _metric_name(merged: Mapping[str, Any], loc: Loc) -> str | None:
    """The name of the metric ``loc`` points into (``profiles.<p>.metrics[i]...``), if known."""
    if len(loc) < 4 or loc[0] != "profiles" or loc[2] != "metrics" or not isinstance(loc[3], int):
        return None
    try:
        spec = merged["profiles"][loc[1]]["metrics"][loc[3]]
    except (KeyError, IndexError, TypeError):
        return None
    name = spec.get("name") if isinstance(spec, Mapping) else getattr(spec, "name", None)
    return name if isinstance(name, str) and name else None


def _dotted(loc: Loc) -> str:
    """Render a key path the way it is written: ``profiles.default.metrics[1].objective``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _depth(data: Any, loc: Loc) -> int:
    """How many leading parts of ``loc`` exist in the nested ``data``."""
    depth = 0
    for part in loc:
        in_table = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_table or in_list):
            break
        data = data[part]
        depth += 1
    return depth


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _deep_merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``low`` updated by ``high``, tables merged key by key (as pydantic-settings does)."""
    merged = dict(low)
    for key, value in high.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged


__all__ = ["CONFIG_ENV", "ENVIRONMENT", "ENV_DELIMITER", "ENV_PREFIX", "Settings", "load_settings"]
