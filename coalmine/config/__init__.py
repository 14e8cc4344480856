"""Configuration: the schema, durations, and loading from TOML plus ``COALMINE_*`` variables."""

from coalmine.config.durations import Duration, parse_duration
from coalmine.config.models import (
    DEFAULT_PROFILE,
    HttpSettings,
    KafkaSettings,
    LimitSettings,
    MetricSpec,
    Profile,
    TopicsSettings,
)
from coalmine.config.settings import Settings, load_settings

__all__ = [
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
]
