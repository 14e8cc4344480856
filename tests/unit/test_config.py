from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

import coalmine.config
from coalmine._exceptions import ConfigError, ConfigProblem
from coalmine.config import (
    DEFAULT_PROFILE,
    MetricSpec,
    Profile,
    Settings,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "coalmine.toml"

MINIMAL_PROFILE = """
[profiles.default]
interval = "60s"

[[profiles.default.metrics]]
name = "latency_ms"

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
objective = 0.999
"""


def write(tmp_path: Path, text: str, name: str = "coalmine.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def keys_of(problems: list[ConfigProblem]) -> list[str]:
    return [p.key for p in problems]


# -- loading ---------------------------------------------------------------------------------


def test_public_api_is_exactly_this() -> None:
    assert coalmine.config.__all__ == sorted(coalmine.config.__all__)
    assert set(coalmine.config.__all__) == {
        "DEFAULT_PROFILE",
        "Duration",
        "HttpSettings",
        "KafkaSettings",
        "LimitSettings",
        "MetricSpec",
        "Profile",
        "Settings",
        "TopicsSettings",
        "load_settings",
        "parse_duration",
    }


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, {})
    assert settings == Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.idempotent_producer is True
    assert settings.topics.dead_letter == "coalmine.dlq"
    assert settings.http.port == 9464
    assert settings.limits.max_open_deployments == 10_000
    assert settings.profiles == {"default": DEFAULT_PROFILE}
    assert settings.profile() is settings.profiles["default"]
    assert settings.profile("nope") is None
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_unrelated_environment_is_ignored() -> None:
    environ = {"PATH": "/bin", "COALMINE_TEST_BROKER": "x", "HOME": "/root"}
    assert load_settings(None, environ) == Settings()


def test_shipped_example_loads() -> None:
    settings = load_settings(EXAMPLE, {})
    default = settings.profiles["default"]
    assert (default.interval, default.min_duration, default.max_duration) == (60, 300, 1800)
    latency, requests = default.metrics
    assert (latency.name, latency.kind, latency.direction) == (
        "latency_ms",
        "distribution",
        "increase",
    )
    assert latency.tolerance == pytest.approx(0.10)
    assert (requests.kind, requests.objective, requests.critical) == ("ratio", 0.999, True)
    assert requests.tolerance == pytest.approx(0.5)
    assert len(settings.profiles) >= 2
    strict = settings.profiles["strict"]
    assert strict.digest() != default.digest()
    assert settings.kafka.idempotent_producer is True


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    assert load_settings(None, {"COALMINE_CONFIG": str(path)}).http.port == 9000
    assert load_settings(None, {"COALMINE_CONFIG": ""}) == Settings()


def test_explicit_path_beats_config_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    missing = str(tmp_path / "missing.toml")
    assert load_settings(path, {"COALMINE_CONFIG": missing}).http.port == 9000
    assert load_settings(str(path), {}).http.port == 9000


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log_level = "debug"
        log_format = "json"
        [kafka]
        idempotent_producer = false
        request_timeout = "1m"
        [topics]
        verdicts = "judgements"
        """
        + MINIMAL_PROFILE,
    )
    settings = load_settings(path, {})
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.kafka.idempotent_producer is False
    assert settings.kafka.request_timeout == 60.0
    assert settings.topics.verdicts == "judgements"
    assert settings.topics.metrics == "coalmine.metrics"
    assert [m.name for m in settings.profiles["default"].metrics] == ["latency_ms", "requests"]


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [kafka]
        bootstrap_servers = "file:9092"
        group_id = "from-file"
        [http]
        port = 9000
        """
        + MINIMAL_PROFILE,
    )
    environ = {
        "COALMINE_KAFKA__BOOTSTRAP_SERVERS": "env-1:9092,env-2:9092",
        "COALMINE_HTTP__PORT": "9100",
        "COALMINE_HTTP__ENABLED": "false",
        "COALMINE_PROFILES__DEFAULT__INTERVAL": "30s",
        "COALMINE_LOG_FORMAT": "json",
    }
    settings = load_settings(path, environ)
    assert settings.kafka.bootstrap_servers == "env-1:9092,env-2:9092"
    assert settings.kafka.group_id == "from-file"
    assert settings.http.port == 9100
    assert settings.http.enabled is False
    assert settings.log_format == "json"
    default = settings.profiles["default"]
    assert default.interval == 30.0
    assert [m.name for m in default.metrics] == ["latency_ms", "requests"]  # kept from the file


def test_environment_overrides_the_built_in_default_profile() -> None:
    settings = load_settings(None, {"COALMINE_PROFILES__DEFAULT__MIN_DURATION": "10m"})
    default = settings.profiles["default"]
    assert default.min_duration == 600.0
    assert default.metrics == DEFAULT_PROFILE.metrics


def test_environment_variable_names_are_case_insensitive() -> None:
    settings = load_settings(None, {"coalmine_kafka__group_id": "lower"})
    assert settings.kafka.group_id == "lower"


def test_metrics_from_environment_as_json() -> None:
    metrics = '[{"name": "errors", "kind": "ratio", "objective": 0.99}]'
    settings = load_settings(None, {"COALMINE_PROFILES__DEFAULT__METRICS": metrics})
    (spec,) = settings.profiles["default"].metrics
    assert (spec.name, spec.objective) == ("errors", 0.99)


def test_secret_from_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [kafka]
        security_protocol = "SASL_SSL"
        sasl_mechanism = "SCRAM-SHA-512"
        sasl_username = "coalmine"
        """,
    )
    settings = load_settings(path, {"COALMINE_KAFKA__SASL_PASSWORD": "hunter2-secret"})
    assert isinstance(settings.kafka.sasl_password, SecretStr)
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-secret"
    for text in (str(settings), repr(settings), repr(settings.kafka), str(settings.kafka)):
        assert "hunter2-secret" not in text


def test_direct_construction_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COALMINE_KAFKA__GROUP_ID", "from-os-env")
    monkeypatch.setenv("COALMINE_HTTP__PORT", "9200")
    settings = Settings(http={"port": 9300})
    assert settings.kafka.group_id == "from-os-env"
    assert settings.http.port == 9300  # keyword arguments win


def test_load_settings_does_not_read_os_environ_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COALMINE_KAFKA__GROUP_ID", "from-os-env")
    assert load_settings(None, {}).kafka.group_id == "coalmine"
    assert load_settings(None).kafka.group_id == "from-os-env"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_direct_construction_needs_a_default_profile() -> None:
    other = Profile(metrics=(MetricSpec(name="x"),))
    with pytest.raises(ValidationError, match='no "default" profile'):
        Settings(profiles={"other": other})


# -- problems --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert problems_of(path) == [ConfigProblem(str(path), "", "file not found")]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path)
    assert problem.source == str(tmp_path)
    assert "directory" in problem.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[kafka]\ngroup_id = "caf\xe9"\n')
    (problem,) = problems_of(path)
    assert "UTF-8" in problem.message


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\ngroup_id = "x"\nbootstrap_servers 127.0.0.1\n')
    (problem,) = problems_of(path)
    assert problem.source == str(path)
    assert problem.key == "line 3, column 19"
    assert problem.message.startswith("TOML syntax error: ")
    assert str(problem) == f"{path}: line 3, column 19: {problem.message}"


def test_file_problem_and_environment_problems_together(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.toml", {"COALMINE_HTTP__PORT": "huge"})
    assert [(p.source, p.key) for p in problems] == [
        (str(tmp_path / "nope.toml"), ""),
        ("environment", "COALMINE_HTTP__PORT"),
    ]


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log_levle = "INFO"
        [kafka]
        bootstrap_server = "x:9092"
        [htpp]
        port = 1
        """,
    )
    problems = problems_of(path)
    by_key = {p.key: p.message for p in problems}
    assert by_key == {
        "log_levle": "unknown key, did you mean 'log_level'?",
        "kafka.bootstrap_server": "unknown key, did you mean 'bootstrap_servers'?",
        "htpp": "unknown key, did you mean 'http'?",
    }
    assert {p.source for p in problems} == {str(path)}


def test_unknown_metric_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE + "objectve = 0.99\n")
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.metrics[1].objectve"
    assert problem.message == "unknown key, did you mean 'objective'? (metric 'requests')"


def test_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log_format = "yaml"
        [http]
        port = "nine thousand"
        enabled = "maybe"
        [kafka]
        max_poll_records = 0
        """,
    )
    problems = problems_of(path)
    by_key = {p.key: p.message for p in problems}
    assert set(by_key) == {"log_format", "http.port", "http.enabled", "kafka.max_poll_records"}
    assert "valid integer" in by_key["http.port"]
    assert "(got 'nine thousand')" in by_key["http.port"]
    assert "'text' or 'json'" in by_key["log_format"]
    assert "greater than 0" in by_key["kafka.max_poll_records"]


def test_bad_durations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_PROFILE.replace('interval = "60s"', 'interval = "5x"\nmin_duration = -5')
        + '[kafka]\nrequest_timeout = "soon"\n',
    )
    by_key = {p.key: p.message for p in problems_of(path)}
    assert set(by_key) == {
        "profiles.default.interval",
        "profiles.default.min_duration",
        "kafka.request_timeout",
    }
    assert by_key["profiles.default.interval"].startswith("'5x' is not a duration")
    assert "not negative" in by_key["profiles.default.min_duration"]


def test_zero_interval(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE.replace('"60s"', '"0s"'))
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.interval"
    assert "greater than 0" in problem.message


def test_ratio_metric_without_objective(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE.replace("objective = 0.999\n", ""))
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.metrics[1].objective"
    assert problem.message == (
        "a ratio metric needs an objective, e.g. objective = 0.999 (metric 'requests')"
    )


def test_objective_on_a_distribution_metric(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL_PROFILE.replace('name = "latency_ms"', 'name = "l"\nobjective = 0.9')
    )
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.metrics[0].objective"
    assert "ratio metrics only" in problem.message


def test_min_duration_above_max_duration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_PROFILE.replace('interval = "60s"', 'min_duration = "40m"\nmax_duration = "30m"'),
    )
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.max_duration"
    assert problem.message == "max_duration (30m) must not be shorter than min_duration (40m)"


def test_min_duration_above_default_max_duration(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE.replace('interval = "60s"', 'min_duration = "2h"'))
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.max_duration"


def test_marginal_score_above_pass_score(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE.replace('interval = "60s"', "pass_score = 70"))
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.marginal_score"
    assert problem.message == "marginal_score (75) must not exceed pass_score (70)"


def test_duplicate_metric_names(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL_PROFILE + '\n[[profiles.default.metrics]]\nname = "latency_ms"\n'
    )
    (problem,) = problems_of(path)
    assert problem.key == "profiles.default.metrics"
    assert problem.message == "metric names must be unique: latency_ms repeated"


def test_profile_without_metrics(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.default]\ninterval = '30s'\n")
    (problem,) = problems_of(path)
    assert problem == ConfigProblem(
        str(path), "profiles.default.metrics", "required key is missing"
    )


def test_all_metrics_invalid_reports_each_not_the_empty_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[profiles.default.metrics]]
        name = "a"
        kind = "ratio"
        [[profiles.default.metrics]]
        name = "b"
        kind = "histogram"
        """,
    )
    assert keys_of(problems_of(path)) == [
        "profiles.default.metrics[0].objective",
        "profiles.default.metrics[1].kind",
    ]


def test_profiles_without_default(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_PROFILE.replace("profiles.default", "profiles.strict"))
    (problem,) = problems_of(path)
    assert problem.source == str(path)
    assert problem.key == "profiles"
    assert 'no "default" profile' in problem.message


def test_missing_default_is_reported_with_other_problems(tmp_path: Path) -> None:
    text = MINIMAL_PROFILE.replace("profiles.default", "profiles.strict")
    path = write(tmp_path, text.replace('"60s"', '"often"'))
    assert keys_of(problems_of(path)) == ["profiles", "profiles.strict.interval"]


def test_incomplete_sasl(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = "u"\n')
    (problem,) = problems_of(path)
    assert problem.key == "kafka"
    assert problem.message == "security_protocol SASL_SSL needs sasl_mechanism, sasl_password"


def test_three_problems_yield_exactly_three(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        grup_id = "coalmine"

        [http]
        port = 70000

        [profiles.default]
        interval = "60s"

        [[profiles.default.metrics]]
        name = "latency_ms"

        [[profiles.default.metrics]]
        name = "requests"
        kind = "ratio"
        critical = true
        """,
    )
    problems = problems_of(path)
    assert keys_of(problems) == [
        "kafka.grup_id",
        "http.port",
        "profiles.default.metrics[1].objective",
    ]
    assert {p.source for p in problems} == {str(path)}
    assert str(ConfigError(problems)).count("\n  - ") == 3


def test_every_problem_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        log_level = "LOUD"
        [topics]
        metrics = 5
        [limits]
        max_samples_per_cohort = -1
        [profiles.default]
        interval = "1 fortnight"
        min_duration = "1h"
        max_duration = "30m"
        [[profiles.default.metrics]]
        name = "latency_ms"
        direction = "sideways"
        [[profiles.default.metrics]]
        name = "latency_ms"
        [profiles.slow]
        alpha = 0.9
        [[profiles.slow.metrics]]
        name = ""
        """,
    )
    assert keys_of(problems_of(path)) == [
        "topics.metrics",
        "limits.max_samples_per_cohort",
        "profiles.default.interval",
        "profiles.default.max_duration",
        "profiles.default.metrics[0].direction",
        "profiles.slow.alpha",
        "profiles.slow.metrics[0].name",
        "log_level",
    ]


# -- problems in the environment -------------------------------------------------------------


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    (problem,) = problems_of(path, {"COALMINE_HTTP__PORT": "not-a-port"})
    assert problem.source == "environment"
    assert problem.key == "COALMINE_HTTP__PORT"
    assert "valid integer" in problem.message


def test_bad_duration_in_environment() -> None:
    (problem,) = problems_of(None, {"COALMINE_PROFILES__DEFAULT__INTERVAL": "5x"})
    assert problem == ConfigProblem(
        "environment",
        "COALMINE_PROFILES__DEFAULT__INTERVAL",
        "'5x' is not a duration: use e.g. '90s', '5m', '1h30m' or seconds",
    )


def test_unknown_key_in_environment() -> None:
    (problem,) = problems_of(None, {"COALMINE_KAFKA__BOOTSTRAP_SERVRES": "x:9092"})
    assert problem.source == "environment"
    assert problem.key == "COALMINE_KAFKA__BOOTSTRAP_SERVRES"
    assert problem.message == "unknown key, did you mean 'bootstrap_servers'?"


def test_unknown_section_in_environment() -> None:
    (problem,) = problems_of(None, {"COALMINE_KAFAK__GROUP_ID": "x"})
    assert problem.key == "COALMINE_KAFAK__GROUP_ID"
    assert problem.message == "unknown key 'kafak', did you mean 'kafka'?"


def test_single_underscore_in_environment() -> None:
    (problem,) = problems_of(None, {"COALMINE_KAFKA_BOOTSTRAP_SERVERS": "x:9092"})
    assert problem.key == "COALMINE_KAFKA_BOOTSTRAP_SERVERS"
    assert "COALMINE_KAFKA__BOOTSTRAP_SERVERS" in problem.message


def test_invalid_json_in_environment() -> None:
    problems = problems_of(
        None,
        {"COALMINE_PROFILES__DEFAULT__METRICS": "[{name: x}]", "COALMINE_HTTP__PORT": "-1"},
    )
    assert [(p.source, p.key) for p in problems] == [
        ("environment", "COALMINE_PROFILES__DEFAULT__METRICS"),
        ("environment", "COALMINE_HTTP__PORT"),
    ]
    assert "JSON" in problems[0].message


def test_problem_inside_json_from_environment() -> None:
    metrics = '[{"name": "errors", "kind": "ratio"}]'
    (problem,) = problems_of(None, {"COALMINE_PROFILES__DEFAULT__METRICS": metrics})
    assert problem.key == "COALMINE_PROFILES__DEFAULT__METRICS"
    assert problem.message.startswith("[0].objective: a ratio metric needs an objective")


def test_profile_only_in_environment_names_the_missing_variable() -> None:
    (problem,) = problems_of(None, {"COALMINE_PROFILES__FAST__INTERVAL": "10s"})
    assert problem == ConfigProblem(
        "environment", "COALMINE_PROFILES__FAST__METRICS", "required key is missing"
    )


def test_file_and_environment_problems_are_told_apart(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 'x'\n")
    problems = problems_of(path, {"COALMINE_KAFKA__MAX_POLL_RECORDS": "none"})
    assert [(p.source, p.key) for p in problems] == [
        ("environment", "COALMINE_KAFKA__MAX_POLL_RECORDS"),
        (str(path), "http.port"),
    ]


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [kafka]
        security_protocol = "SASL_SSL"
        sasl_password = "file-secret-1"
        ssl_password = 424242
        """,
    )
    environ = {
        "COALMINE_KAFKA__SASL_USERNAME": "u",
        "COALMINE_TOPICS": '{"metrics": 1, "password": "json-secret-2"}',
    }
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ)
    text = str(info.value) + repr(info.value.problems)
    assert info.value.problems
    for secret in ("file-secret-1", "424242", "json-secret-2"):
        assert secret not in text


# -- profiles --------------------------------------------------------------------------------


def test_digest_is_stable() -> None:
    again = Profile(
        metrics=(
            MetricSpec(name="latency_ms", kind="distribution", direction="increase"),
            MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
        )
    )
    assert again.digest() == DEFAULT_PROFILE.digest()
    assert DEFAULT_PROFILE.digest().startswith("sha256:")
    assert len(DEFAULT_PROFILE.digest()) == len("sha256:") + 64


def test_digest_ignores_how_a_value_was_written(tmp_path: Path) -> None:
    a = load_settings(write(tmp_path, MINIMAL_PROFILE, "a.toml"), {})
    b = load_settings(write(tmp_path, MINIMAL_PROFILE.replace('"60s"', '"1m"'), "b.toml"), {})
    assert a.profiles["default"].digest() == b.profiles["default"].digest()


@pytest.mark.parametrize(
    "change",
    [
        {"interval": 30.0},
        {"pass_score": 96.0},
        {"alpha": 0.01},
        {"metrics": (MetricSpec(name="latency_ms"),)},
        {"metrics": tuple(reversed(DEFAULT_PROFILE.metrics))},
    ],
)
def test_digest_changes_with_any_value(change: dict[str, object]) -> None:
    changed = DEFAULT_PROFILE.model_copy(update=change)
    assert changed.digest() != DEFAULT_PROFILE.digest()


def test_digest_changes_with_a_metric_value() -> None:
    latency, requests = DEFAULT_PROFILE.metrics
    looser = requests.model_copy(update={"objective": 0.99})
    changed = Profile(metrics=(latency, looser))
    assert changed.digest() != DEFAULT_PROFILE.digest()
