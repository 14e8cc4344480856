"""docs/getting-started.md, followed as written: its configuration, `coalmine topics`, its
`feed.py` through `coalmine start`, `send` and `wait`, on a real broker. A healthy canary is
promoted and the 50% slower one rolled back, as the page says."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from coalmine.bus.connect import build_transport
from coalmine.config.settings import load_settings
from coalmine.daemon.app import Daemon
from tests.integration.test_cli_tools_kafka import coalmine

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings

PAGE = (Path(__file__).parents[2] / "docs" / "getting-started.md").read_text()


def block(language: str, first_line: str) -> str:
    """The page's fenced code block in ``language`` whose first line is ``first_line``."""
    for body in re.findall(rf"```{language}\n(.*?)```", PAGE, flags=re.DOTALL):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"no {language} block starting {first_line!r} in getting-started.md")


def config(kafka: KafkaSettings, topic_name: Callable[[str], str], path: Path) -> Path:
    """The page's coalmine.toml, on the test broker and this test's topics."""
    toml = block("toml", "[kafka]").replace(
        'bootstrap_servers = "localhost:9092"',
        f'bootstrap_servers = "{kafka.bootstrap_servers}"\n'
        f"idempotent_producer = {str(kafka.idempotent_producer).lower()}",
    )
    topics = "".join(
        f'{key} = "{topic_name(key)}"\n'
        for key in ("deployments", "metrics", "verdicts", "dead_letter")
    )
    path.write_text(f"{toml}\n[topics]\n{topics}")
    return path


async def feed(script: Path, config_path: str, *args: str) -> None:
    """``python3 feed.py ARGS | coalmine send --config FILE``."""
    lines = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, stdout=asyncio.subprocess.PIPE
    )
    events, _ = await lines.communicate()
    assert lines.returncode == 0
    source = script.with_suffix(".jsonl")
    source.write_bytes(events)
    code, out, err = await coalmine("send", "--config", config_path, str(source))
    assert code == 0, err.decode()
    assert out.decode().startswith("sent 0 deploy event(s) and 360 metric message(s)")


async def test_the_getting_started_page_gives_a_promote_and_a_rollback(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    path = str(config(kafka_settings, topic_name, tmp_path / "coalmine.toml"))
    code, out, err = await coalmine("topics", "--config", path)
    assert code == 0, err.decode()
    assert out.decode().count("created, 6 partitions") == 4
    script = tmp_path / "feed.py"
    script.write_text(block("python", "# feed.py"))
    settings = load_settings(Path(path))
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        decisions = {}
        for deployment, old, new, slowdown in (
            ("checkout-v42", "v41", "v42", None),
            ("checkout-v43", "v42", "v43", "1.5"),
        ):
            start = str(int(time.time()) - 1200)  # START=$(( $(date +%s) - 1200 ))
            code, _, err = await coalmine(
                "start", "--config", path, "--deployment", deployment, "--service",
                "checkout", "--baseline", old, "--canary", new, "--time", start,
            )  # fmt: skip
            assert code == 0, err.decode()
            args = [start] if slowdown is None else [start, deployment, new, slowdown]
            await feed(script, path, *args)
            code, out, _ = await coalmine(
                "wait", "--config", path, "--deployment", deployment, "--timeout", "60s",
                within=90.0,
            )  # fmt: skip
            decisions[deployment] = (code, out.decode().splitlines()[-1].split()[0])
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert decisions == {"checkout-v42": (0, "promote"), "checkout-v43": (1, "rollback")}
