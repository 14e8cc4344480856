"""The ``coalmine`` command: the daemon, the demo, and the SRE and pipeline tools.

Commands: ``run``, ``demo``, ``check``, ``topics``, ``replay``, ``record``, ``report``,
``start``, ``step``, ``send``, ``finish``, ``wait``.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration; ``wait`` also
exits 1 rollback, 3 inconclusive, 4 timeout (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NoReturn

import click
import orjson

from coalmine._exceptions import CoalmineError, ConfigError
from coalmine.config.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from coalmine.contract import FlagRollout, Verdict
    from coalmine.tools.replay import Run as ReplayRun

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
    from coalmine.bus.kafka.logs import ClientRepeats  # noqa: PLC0415 - only `run` logs

    handler.addFilter(ClientRepeats())
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
    from coalmine.bus.connect import build_transport  # noqa: PLC0415
    from coalmine.daemon.app import Daemon, install_signal_handlers  # noqa: PLC0415

    async def serve() -> None:
        daemon = Daemon(
            settings,
            build_transport(settings),
            reload=(lambda: load_settings(config_path)) if config_path else None,
        )
        install_signal_handlers(daemon)
        await daemon.run()

    try:
        asyncio.run(serve())
    except CoalmineError as exc:
        logging.getLogger("coalmine").error("%s", exc)
        sys.exit(EXIT_RUNTIME)


@main.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="How many times faster than real time event time runs.",
)
@click.option("--seed", type=int, default=11, show_default=True, help="Simulator seed.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Play the demo on the Kafka this configuration names (its topics must exist)"
    " instead of the in-memory bus.",
)
@click.option(
    "--strategy",
    type=click.Choice(["canary", "blue_green", "feature_flag"]),
    default="canary",
    show_default=True,
    help="canary: two canaries beside their baselines; blue_green: two blue-green switches,"
    " one switched back to blue, one promoted; feature_flag: two flag rollouts stepping"
    " 5-25-50-100% on the verdicts, one switched off by the flagd kill switch (in-memory bus).",
)
def demo(
    speed: float,
    seed: int,
    config_path: Path | None,
    strategy: Literal["canary", "blue_green", "feature_flag"],
) -> None:
    """Run coalmine with a built-in traffic simulator; --config: on your Kafka.

    Without --config, on the in-memory bus: no broker needed.
    """
    from coalmine.tools.demo import run_demo  # noqa: PLC0415 - keeps `coalmine --help` fast

    logging.basicConfig(level=logging.WARNING)
    if strategy == "feature_flag":
        if config_path is not None:
            raise click.UsageError("demo --strategy feature_flag plays on the in-memory bus only")
        from coalmine.tools.flag_demo import run_flag_demo  # noqa: PLC0415

        asyncio.run(run_flag_demo(speed=speed, seed=seed))
        return
    if config_path is None:
        asyncio.run(run_demo(speed=speed, seed=seed, strategy=strategy))
        return
    settings = _load(config_path)
    if "kafka" not in settings.bus.consume or "kafka" not in settings.bus.publish:
        raise click.UsageError(
            "demo --config plays onto Kafka, and this configuration's [bus] does not both"
            " consume and publish on it; on MQTT, use `coalmine run` with `coalmine send`"
        )
    try:
        asyncio.run(run_demo(speed=speed, seed=seed, settings=settings, strategy=strategy))
    except CoalmineError as exc:
        _runtime_error(exc)


@main.command()
@_config_option
@click.option(
    "--broker",
    is_flag=True,
    help="Also connect to Kafka and check what production needs: topics, partition counts,"
    " retention, replication, permissions (docs/cli.md).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="With --broker: print the findings as one JSON object."
)
def check(config_path: Path | None, broker: bool, as_json: bool) -> None:
    """Validate a configuration: exit 0, or print every problem and exit 2.

    With --broker, then check the Kafka cluster it names: one line per check passed and
    per problem (with its fix); exit 2 if there is any problem.
    """
    if as_json and not broker:
        raise click.UsageError("--json goes with --broker")
    settings = _load(config_path)
    where = str(config_path) if config_path else "defaults"
    profiles = ", ".join(
        f"{name} ({len(profile.metrics)} metrics)" for name, profile in settings.profiles.items()
    )
    if not broker:
        click.echo(f"{where}: ok; profiles: {profiles}")
        return
    from coalmine.bus import doctor  # noqa: PLC0415 - aiokafka only for --broker

    valid = doctor.Finding("ok", "config", f"{where} is valid; profiles: {profiles}")
    try:
        findings = [valid, *asyncio.run(doctor.diagnose(settings))]
    except CoalmineError as exc:
        _runtime_error(exc)
    problems = sum(finding.status == "problem" for finding in findings)
    if as_json:
        entry = {
            "config": where,
            "problems": problems,
            "findings": [finding.as_dict() for finding in findings],
        }
        click.echo(orjson.dumps(entry).decode())
    else:
        for finding in findings:
            click.echo(str(finding))
        click.echo(doctor.summary(findings))
    sys.exit(EXIT_USAGE if problems else 0)


@main.command()
@_config_option
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Partitions of each topic created; a missing deployments or metrics topic gets the"
    " count of the other one when it exists (they must match).",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Replicas of each topic created (3 on a production cluster).",
)
def topics(config_path: Path | None, partitions: int, replication_factor: int) -> None:
    """Create the Kafka topics the configuration names that do not exist yet.

    The deployments, metrics, verdicts and dead-letter topics of [topics]; existing topics
    are left as they are. Prints each topic with its partition count.
    """
    settings = _load(config_path)
    if "kafka" not in (*settings.bus.consume, *settings.bus.publish):
        raise click.UsageError("this configuration's [bus] does not use Kafka; MQTT has no topics")
    from coalmine.bus.kafka import ensure_topics, partition_counts  # noqa: PLC0415

    names = settings.topics
    wanted = [names.deployments, names.metrics, names.verdicts, names.dead_letter]

    async def create() -> tuple[dict[str, int], dict[str, int]]:
        before = await partition_counts(settings.kafka, wanted)
        # The deployments and metrics topics must be co-partitioned: a missing one of the two
        # gets the other's count.
        paired = {names.deployments, names.metrics}
        count = next((before[name] for name in sorted(paired) if name in before), partitions)
        missing = {
            name: count if name in paired else partitions for name in wanted if name not in before
        }
        if missing:
            await ensure_topics(settings.kafka, missing, replication_factor=replication_factor)
        return before, await partition_counts(settings.kafka, wanted)

    try:
        before, after = asyncio.run(create())
    except CoalmineError as exc:
        _runtime_error(exc)
    for name in wanted:
        state = "exists" if name in before else "created"
        click.echo(f"{name}: {state}, {after.get(name, 0)} partitions")


# -- SRE and pipeline tools: replay, record, start / send / finish / wait, report -------------

EXIT_TIMEOUT = 4
"""``coalmine wait``: no final verdict within ``--timeout``."""


def _moment(value: str | None, option: str) -> float | None:
    """``--since`` / ``--until``: a duration ago or an RFC 3339 time, in Unix seconds."""
    if value is None:
        return None
    from coalmine.tools.recording import parse_moment  # noqa: PLC0415

    try:
        return parse_moment(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _seconds(value: str, option: str) -> float:
    from coalmine.config.durations import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _quiet_router(settings: Settings) -> None:
    """Log as configured, but leave invalid input to the replay's own report."""
    _setup_logging(settings)
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("coalmine.daemon.router").setLevel(logging.ERROR)


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[BinaryIO]:
    """The file at ``path``, or standard input for ``-``, in binary mode."""
    if str(path) == "-":
        yield sys.stdin.buffer
        return
    with path.open("rb") as stream:
        yield stream


def _runtime_error(exc: CoalmineError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_RUNTIME)


_input_option = click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True, allow_dash=True),
    default=None,
    help="A recording: JSON Lines of deploy and metric events or envelopes (docs/cli.md).",
)
_from_kafka_option = click.option(
    "--from-kafka",
    is_flag=True,
    help="Read the deployments, metrics and [[inputs]] topics from Kafka instead.",
)


@main.command()
@_config_option
@_input_option
@_from_kafka_option
@click.option("--since", default=None, help="With --from-kafka: from when ('2h' ago, RFC 3339).")
@click.option("--until", default=None, help="With --from-kafka: until when (default: now).")
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A second configuration: judge the same stream with it and show the differences.",
)
@click.option("--json", "as_json", is_flag=True, help="Print verdicts as JSON lines, as published.")
def replay(
    config_path: Path | None,
    input_path: Path | None,
    from_kafka: bool,
    since: str | None,
    until: str | None,
    compare_path: Path | None,
    as_json: bool,
) -> None:
    """Judge a recorded stream offline on event time, exactly as the daemon would."""
    if (input_path is None) == (not from_kafka):
        raise click.UsageError("give either --input FILE or --from-kafka")
    if from_kafka and since is None:
        raise click.UsageError("--from-kafka needs --since (e.g. --since 2h)")
    if not from_kafka and (since is not None or until is not None):
        raise click.UsageError("--since and --until go with --from-kafka")
    settings = _load(config_path)
    other = _load(compare_path) if compare_path is not None else None
    begin, end = _moment(since, "--since"), _moment(until, "--until")
    _quiet_router(settings)
    from coalmine.contract import encode_verdict  # noqa: PLC0415
    from coalmine.tools import replay as replaying  # noqa: PLC0415 - keeps `coalmine --help` fast

    out = sys.stdout.buffer
    on_verdict = None
    if as_json and other is None:

        def on_verdict(verdict: Verdict) -> None:
            out.write(encode_verdict(verdict) + b"\n")

    problems = replaying.Problems()
    try:
        if from_kafka:
            from coalmine.tools.recording import read_stream  # noqa: PLC0415

            recording = asyncio.run(read_stream(settings, since=begin, until=end))
            entries = replaying.record_entries(recording.records, settings.topics)
            result = replaying.run(
                entries, settings, other=other, problems=problems, on_verdict=on_verdict
            )
        else:
            assert input_path is not None  # noqa: S101 - checked above
            with _open_input(input_path) as stream:
                entries = replaying.read_jsonl(
                    stream, settings.topics, replaying.input_topics(settings), problems
                )
                result = replaying.run(
                    entries, settings, other=other, problems=problems, on_verdict=on_verdict
                )
    except CoalmineError as exc:
        _runtime_error(exc)
    out.flush()
    _show_replay(result, config_path, compare_path, as_json=as_json)


def _show_replay(
    result: ReplayRun,
    config_path: Path | None,
    compare_path: Path | None,
    *,
    as_json: bool,
) -> None:
    from coalmine.tools import replay_table  # noqa: PLC0415
    from coalmine.tools.replay import outcome_dict  # noqa: PLC0415

    names = (
        config_path.name if config_path else "defaults",
        compare_path.name if compare_path else "",
    )
    if not as_json:
        replay_table.show(replay_table.console(), result, names)
        return
    if result.second is not None:
        for difference in result.differences:
            entry = {
                "deployment_id": difference.deployment_id,
                "service": difference.service,
                "difference": difference.kind,
                "config": outcome_dict(difference.first),
                "compare": outcome_dict(difference.second),
            }
            click.echo(orjson.dumps(entry).decode())
    click.echo(f"replay: {replay_table.summary_line(result.first)}", err=True)
    for line in replay_table.problems_lines(result.first):
        click.echo(line, err=True)


@main.command()
@_config_option
@click.option(
    "--output",
    "-o",
    "output_path",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    required=True,
    help="The JSONL file to write ('-': standard output).",
)
@click.option("--since", required=True, help="From when: '2h' (ago) or an RFC 3339 time.")
@click.option("--until", default=None, help="Until when (default: the end offsets at start).")
def record(config_path: Path | None, output_path: Path, since: str, until: str | None) -> None:
    """Record the deployments, metrics and [[inputs]] topics over a time range, for replay."""
    settings = _load(config_path)
    begin, end = _moment(since, "--since"), _moment(until, "--until")
    _setup_logging(settings)
    from coalmine.tools.recording import read_stream, write_jsonl  # noqa: PLC0415

    try:
        recording = asyncio.run(read_stream(settings, since=begin, until=end))
    except CoalmineError as exc:
        _runtime_error(exc)
    for topic in recording.missing:
        click.echo(f"warning: topic {topic} does not exist; nothing read from it", err=True)
    if str(output_path) == "-":
        count = write_jsonl(sys.stdout.buffer, recording.records, settings.topics)
    else:
        partial = output_path.with_name(output_path.name + ".part")
        with partial.open("wb") as out:
            count = write_jsonl(out, recording.records, settings.topics)
        partial.replace(output_path)
    per_topic = ", ".join(f"{topic} {n}" for topic, n in recording.per_topic.items()) or "none"
    click.echo(f"recorded {count} messages ({per_topic}) to {output_path}", err=True)


def _announce(settings: Settings, value: bytes, service: str) -> str:
    from coalmine.tools.pipeline import announce  # noqa: PLC0415

    try:
        return asyncio.run(announce(settings, value, service))
    except CoalmineError as exc:
        _runtime_error(exc)


def _deploy_event(*, at: float | None, **fields: Any) -> bytes:
    """A validated deploy event of ``fields``, timed ``at`` (or now)."""
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.contract import encode_deploy_event  # noqa: PLC0415

    try:
        return encode_deploy_event(at=time.time() if at is None else at, **fields)
    except ContractError as exc:
        raise click.UsageError(f"not a valid deploy event: {exc}") from None


def _flag(text: str | None) -> FlagRollout | None:
    """``--flag KEY:CONTROL:TREATMENT``."""
    from coalmine.contract import FlagRollout  # noqa: PLC0415

    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter(f"not KEY:CONTROL:TREATMENT: {text!r}", param_hint="--flag")
    return FlagRollout(*parts)


def _weights(text: str | None) -> tuple[float, ...]:
    """``--steps``: comma-separated traffic weights."""
    if text is None:
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"not a list of weights: {text!r} (e.g. 5,25,50,100)") from None


_deployment_option = click.option(
    "--deployment", "deployment_id", required=True, help="The deployment id."
)
_service_option = click.option("--service", required=True, help="The service deployed.")


def _event_time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """``--time``: RFC 3339 (``2026-11-26T10:00:00Z``) or Unix seconds; None: now."""
    if value is None:
        return None
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.contract import parse_time  # noqa: PLC0415

    try:
        return parse_time(float(value) if _is_number(value) else value)
    except ContractError as exc:
        raise click.BadParameter(f"{value!r}: {exc.message}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_phase_option = click.option(
    "--phase",
    default=None,
    help="The phase the change enters: a migration's (expand, backfill, ...) or a"
    " blue-green deployment's (preview, switched).",
)
_time_option = click.option(
    "--time",
    "at",
    default=None,
    callback=_event_time,
    help="The event's time: RFC 3339 ('2026-11-26T10:00:00Z') or Unix seconds (default:"
    " now). Use the time the change took effect when your metrics carry their own times.",
)


@main.command()
@_config_option
@_deployment_option
@_service_option
@click.option("--baseline", default=None, help="The baseline's version (not for a migration).")
@click.option("--canary", default=None, help="The canary's version (not for a migration).")
@click.option("--profile", default=None, help="Analysis profile (the daemon's default: default).")
@click.option(
    "--traffic-weight",
    type=click.FloatRange(0, 100),
    default=None,
    help="Percent of traffic to the canary.",
)
@click.option(
    "--strategy",
    type=click.Choice(["canary", "blue_green", "migration", "feature_flag"]),
    default=None,
    help="Deployment strategy (default: canary).",
)
@_phase_option
@click.option(
    "--steps",
    default=None,
    help="The planned traffic weights of a stepped rollout, e.g. '5,25,50,100': below the"
    " last, a step measured healthy gets an 'advance' verdict instead of 'promote'.",
)
@click.option(
    "--flag",
    default=None,
    metavar="KEY:CONTROL:TREATMENT",
    help="A feature-flag rollout (--strategy feature_flag): the flag key and its control and"
    " treatment variations, which are the cohorts (instead of --baseline and --canary).",
)
@_time_option
def start(  # noqa: PLR0913 - one parameter per option
    config_path: Path | None,
    deployment_id: str,
    service: str,
    baseline: str | None,
    canary: str | None,
    profile: str | None,
    traffic_weight: float | None,
    strategy: str | None,
    phase: str | None,
    steps: str | None,
    flag: str | None,
    at: float | None,
) -> None:
    """Announce a deployment: publish its `started` event (time: --time, or now).

    A migration phase (--strategy migration --phase NAME) needs no versions: it is judged
    against the service's own past.
    """
    settings = _load(config_path)
    value = _deploy_event(
        event="started",
        deployment_id=deployment_id,
        service=service,
        at=at,
        baseline=baseline,
        canary=canary,
        profile=profile,
        traffic_weight=traffic_weight,
        strategy=strategy,
        phase=phase,
        steps=_weights(steps),
        flag=_flag(flag),
    )
    if profile is not None and profile not in settings.profiles:
        click.echo(
            f"warning: profile {profile!r} is not in this configuration; the daemon"
            " dead-letters the event unless its own configuration has it",
            err=True,
        )
    where = _announce(settings, value, service)
    change = f"{baseline} -> {canary}" if baseline and canary else f"phase {phase or '-'}"
    if flag is not None:
        change = f"flag {flag}"
    click.echo(f"started {deployment_id} ({service} {change}) on {where}")


@main.command()
@_config_option
@_deployment_option
@_service_option
@click.option(
    "--traffic-weight",
    type=click.FloatRange(0, 100),
    default=None,
    help="Percent of traffic to the canary from now on.",
)
@_phase_option
@_time_option
def step(
    config_path: Path | None,
    deployment_id: str,
    service: str,
    traffic_weight: float | None,
    phase: str | None,
    at: float | None,
) -> None:
    """Announce a traffic step or a phase (a blue-green `--phase switched`): publish `step`."""
    if traffic_weight is None and phase is None:
        raise click.UsageError("give --traffic-weight, --phase or both")
    settings = _load(config_path)
    value = _deploy_event(
        event="step",
        deployment_id=deployment_id,
        service=service,
        at=at,
        traffic_weight=traffic_weight,
        phase=phase,
    )
    where = _announce(settings, value, service)
    what = ", ".join(
        part
        for part in (
            None if traffic_weight is None else f"weight {traffic_weight:g}%",
            None if phase is None else f"phase {phase}",
        )
        if part
    )
    click.echo(f"step {deployment_id} ({what}) on {where}")


@main.command()
@_config_option
@click.argument("source", type=click.File("r"), default="-")
def send(config_path: Path | None, source: Any) -> None:
    """Send deploy events and metric messages from JSON Lines (a file, or - for stdin).

    Every line is checked against the contract first; one that does not fit stops the
    command before anything is sent (exit 2, every problem listed). Then each is published,
    in order and keyed by its service, where the daemon reads it: the deployments or the
    metrics topic on Kafka (murmur2, as coalmine expects), else MQTT.
    """
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.tools.pipeline import prepare_events, send_events  # noqa: PLC0415

    settings = _load(config_path)
    try:
        events = prepare_events(source)
    except ContractError as exc:
        problems = exc.message.split("; ")
        click.echo("nothing sent:" + "\n  ".join(["", *problems]), err=True)
        sys.exit(EXIT_USAGE)
    try:
        where = asyncio.run(send_events(settings, events))
    except CoalmineError as exc:
        _runtime_error(exc)
    deploys = sum(1 for e in events if e.kind == "deployments")
    click.echo(
        f"sent {deploys} deploy event(s) and {len(events) - deploys} metric message(s) to {where}"
    )


@main.command()
@_config_option
@_deployment_option
@_service_option
@click.option(
    "--event",
    "kind",
    type=click.Choice(["completed", "aborted"]),
    required=True,
    help="How the pipeline ended the deployment.",
)
@_time_option
def finish(
    config_path: Path | None, deployment_id: str, service: str, kind: str, at: float | None
) -> None:
    """End a deployment from the pipeline: publish `completed` or `aborted` (--time, or now)."""
    settings = _load(config_path)
    value = _deploy_event(event=kind, deployment_id=deployment_id, service=service, at=at)
    where = _announce(settings, value, service)
    click.echo(f"{kind} {deployment_id} on {where}")


@main.command()
@_config_option
@_deployment_option
@click.option(
    "--timeout",
    default="30m",
    show_default=True,
    help="How long to wait for the final verdict ('90s', '30m').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final verdict as JSON.")
@click.option(
    "--step",
    "step",
    type=float,
    default=None,
    help="A stepped rollout: return at the 'advance' verdict of the step at this weight (exit"
    " 0), or at the final verdict.",
)
def wait(
    config_path: Path | None, deployment_id: str, timeout: str, as_json: bool, step: float | None
) -> None:
    """Wait for a deployment's final verdict (or, with --step, its step's advance).

    Exit 0 promote (or advance), 1 rollback, 3 inconclusive, 4 no such verdict within
    --timeout.
    """
    seconds = _seconds(timeout, "--timeout")
    settings = _load(config_path)
    from rich.console import Console  # noqa: PLC0415

    from coalmine.tools.pipeline import describe, wait_for_verdict  # noqa: PLC0415

    console = Console(stderr=True, highlight=False)
    with console.status(f"waiting for the final verdict of {deployment_id}") as status:

        def progress(verdict: dict[str, Any]) -> None:
            line = describe(verdict)
            console.print(line)
            status.update(f"{deployment_id}: {line}")

        result = asyncio.run(
            wait_for_verdict(settings, deployment_id, seconds, progress, advance_at=step)
        )
    if result.final is None:
        latest = f"; latest: {describe(result.latest)}" if result.latest is not None else ""
        console.print(f"[yellow]no final verdict for {deployment_id} within {timeout}[/]{latest}")
        if result.error is not None:
            console.print(f"last broker error: {result.error}", markup=False)
        sys.exit(result.exit_code)
    if as_json:
        click.echo(orjson.dumps(result.final).decode())
    else:
        click.echo(describe(result.final, plain=True))
    sys.exit(result.exit_code)


@main.command()
@click.argument("deployment_id")
@_config_option
@click.option(
    "--output",
    "-o",
    "output_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The HTML file to write.",
)
@_input_option
@_from_kafka_option
@click.option(
    "--since",
    default=None,
    help="With --from-kafka: how far back to read metrics (default: all retained).",
)
def report(
    deployment_id: str,
    config_path: Path | None,
    output_path: Path,
    input_path: Path | None,
    from_kafka: bool,
    since: str | None,
) -> None:
    """Write an HTML report of one deployment: its verdicts and its samples.

    From --input FILE (a recording), or from Kafka: with --from-kafka, or by default when
    the configuration reads Kafka.
    """
    if input_path is not None and from_kafka:
        raise click.UsageError("give either --input FILE or --from-kafka, not both")
    settings = _load(config_path)
    if input_path is None and not from_kafka:
        if "kafka" not in settings.bus.consume:
            raise click.UsageError(
                "give --input FILE: this configuration reads no Kafka to report from"
            )
        from_kafka = True
    if since is not None and not from_kafka:
        raise click.UsageError("--since goes with --from-kafka")
    begin = _moment(since, "--since")
    _quiet_router(settings)
    from coalmine.tools import replay as replaying  # noqa: PLC0415
    from coalmine.tools.report import render_report  # noqa: PLC0415

    try:
        if from_kafka:
            from coalmine.tools.recording import kafka_report_data  # noqa: PLC0415

            verdicts, samples, info = asyncio.run(kafka_report_data(settings, deployment_id, begin))
        else:
            assert input_path is not None  # noqa: S101 - checked above
            with _open_input(input_path) as stream:
                entries = replaying.read_jsonl(
                    stream, settings.topics, replaying.input_topics(settings)
                )
                verdicts, samples, info = replaying.report_data(settings, entries, deployment_id)
    except CoalmineError as exc:
        _runtime_error(exc)
    if info is None and not verdicts:
        where = "Kafka" if from_kafka else str(input_path)
        click.echo(f"error: no deployment {deployment_id} in {where}", err=True)
        sys.exit(EXIT_RUNTIME)
    output_path.write_text(render_report(deployment_id, verdicts, samples), encoding="utf-8")
    click.echo(
        f"wrote {output_path}: {len(verdicts)} verdicts,"
        f" samples of {len(samples)} distribution metric(s)",
        err=True,
    )
