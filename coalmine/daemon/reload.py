"""Reloading the configuration on SIGHUP: new profiles for deployments started later.

Open deployments keep the profile they started with (its digest is in their verdicts).
An invalid configuration is rejected with every problem logged, and the one in force is
kept. Settings other than profiles need a restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coalmine._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.settings import Settings
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["reload_settings"]

log = logging.getLogger(__name__)


def reload_settings(
    in_force: Settings, load: Callable[[], Settings], telemetry: Telemetry
) -> Settings | None:
    """The configuration ``load`` reads, or None if it is invalid (logged and counted).

    Changes to anything but the profiles are logged as waiting for the next restart.
    """
    try:
        settings = load()
    except ConfigError as exc:
        telemetry.config_reloads.labels("rejected").inc()
        log.error("configuration reload rejected; keeping the one in force: %s", exc)
        return None
    changed = [
        name
        for name in type(settings).model_fields
        if name != "profiles" and getattr(settings, name) != getattr(in_force, name)
    ]
    if changed:
        log.warning(
            "configuration reload: changes to %s take effect at the next restart",
            ", ".join(changed),
        )
    telemetry.config_reloads.labels("ok").inc()
    log.info(
        "configuration reloaded: profiles %s apply to deployments started from now on",
        ", ".join(f"{n} ({p.digest()[:15]})" for n, p in settings.profiles.items()),
    )
    return settings
