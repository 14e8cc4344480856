"""The ``coalmine`` command: ``run``, ``demo`` and ``check``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from coalmine._exceptions import CoalmineError, ConfigError
from coalmine.config.settings import Settings, load_settings

if TYPE_CHECKING:
    from coalmine.bus.base import Transport

EXIT_RUNTIME = 1
EXIT_USAGE = 2

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="COALMINE_CONFIG",
    show_envvar=True,
    help="TOML configuration file (defaults apply without one).",
)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def _load(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} problem(s); nothing was started.", err=True)
        sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="coalmine")
def main() -> None:
    """coalmine: event-driven canary analysis on Kafka.

    Reads deploy events and cohort-tagged metrics from the bus, compares canary against
    baseline continuously, and publishes promote / rollback verdicts.
    """


@main.command()
@_config_option
def run(config_path: Path | None) -> None:
    """Run the daemon on the buses [bus] names (Kafka by default) until SIGTERM or SIGINT."""
    settings = _load(config_path)
    _setup_logging(settings)
    from coalmine.daemon.app import Daemon, install_signal_handlers  # noqa: PLC0415

    async def serve() -> None:
        daemon = Daemon(settings, build_transport(settings))
        install_signal_handlers(daemon)
        await daemon.run()

    try:
        asyncio.run(serve())
    except CoalmineError as exc:
        logging.getLogger("coalmine").error("%s", exc)
        sys.exit(EXIT_RUNTIME)


def build_transport(settings: Settings) -> Transport:
    """The buses ``[bus]`` names, as one transport; Kafka is not touched unless named."""
    from coalmine.bus.combined import CombinedTransport  # noqa: PLC0415 - only `run` needs it

    topics = settings.topics
    consume, publish = settings.bus.consume, settings.bus.publish
    buses: dict[str, Transport] = {}
    if "kafka" in consume or "kafka" in publish:
        from coalmine.bus.kafka import KafkaTransport  # noqa: PLC0415 - aiokafka only if used

        reads = "kafka" in consume
        writes = "kafka" in publish
        buses["kafka"] = KafkaTransport(
            settings.kafka,
            [topics.deployments, topics.metrics, *(i.topic for i in settings.inputs)]
            if reads
            else [],
            produce=[topics.verdicts, topics.dead_letter] if writes else [],
            first=[topics.deployments] if reads else [],
        )
    if "mqtt" in consume or "mqtt" in publish:
        from coalmine.bus.mqtt import MqttTransport  # noqa: PLC0415 - aiomqtt only if used

        buses["mqtt"] = MqttTransport(
            settings.mqtt, consume="mqtt" in consume, topic_names=topics.model_dump()
        )
    return CombinedTransport([buses[b] for b in consume], [buses[b] for b in publish])


@main.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="How many times faster than real time event time runs.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Simulator seed.")
def demo(speed: float, seed: int) -> None:
    """Run coalmine on the in-memory bus with a built-in traffic simulator (no broker)."""
    from coalmine.demo import run_demo  # noqa: PLC0415 - keeps `coalmine --help` fast

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_demo(speed=speed, seed=seed))


@main.command()
@_config_option
def check(config_path: Path | None) -> None:
    """Validate a configuration: exit 0, or print every problem and exit 2."""
    settings = _load(config_path)
    where = str(config_path) if config_path else "defaults"
    profiles = ", ".join(
        f"{name} ({len(profile.metrics)} metrics)" for name, profile in settings.profiles.items()
    )
    click.echo(f"{where}: ok; profiles: {profiles}")
