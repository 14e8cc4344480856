"""The verdict report: its content, its robustness, and how headless Chromium renders it.

Verdicts come from coalmine itself: the Router judges the simulator's three deployments of
the shared scenario (a healthy canary promoted, +50% latency rolled back, a critical error
ratio jump rolled back), so the report is tested against the verdicts the daemon publishes.
"""

from __future__ import annotations

import copy
import html
import math
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from coalmine.bus.base import Record
from coalmine.config.models import ReferenceSpec, TopicsSettings
from coalmine.contract import encode_verdict, format_time, parse_time
from coalmine.daemon.router import Router
from coalmine.tools.report import MAX_CURVE_POINTS, render_report
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, PROFILE, T0

Samples = dict[str, tuple[list[float], list[float]]]


# ------------------------------------------------------------------------ real verdicts


@dataclass
class Played:
    """Verdicts (as published JSON) and latency samples per deployment."""

    verdicts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: dict[str, Samples] = field(default_factory=dict)


def play() -> Played:
    """Judge the shared scenario with the Router; samples up to each deployment's last verdict."""
    topics = TopicsSettings()
    router = Router({"default": PROFILE}, topics)
    verdicts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    measured: list[tuple[float, str, str, str, list[float]]] = []
    for message in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3):
        topic = topics.deployments if message.topic == "deployments" else topics.metrics
        if message.topic == "metrics":
            measured.extend(
                (message.time, e["deployment_id"], e["metric"], e["cohort"], e["values"])
                for e in orjson.loads(message.value)
                if "values" in e
            )
        effects = router.handle([Record(topic, message.value, message.key)], now=message.time)
        for verdict in effects.verdicts:  # exactly what goes on the verdict topic
            verdicts[verdict.deployment_id].append(orjson.loads(encode_verdict(verdict)))
    result = Played(verdicts=dict(verdicts))
    for dep_id, history in verdicts.items():
        until = parse_time(history[-1]["time"])
        cohorts: Samples = {}
        for at, owner, metric, cohort, values in measured:
            if owner == dep_id and at <= until:
                pair = cohorts.setdefault(metric, ([], []))
                pair[cohort == "canary"].extend(values)
        result.samples[dep_id] = cohorts
    return result


@pytest.fixture(scope="module")
def played() -> Played:
    result = play()
    assert {d: v[-1]["decision"] for d, v in result.verdicts.items()} == EXPECTED
    return result


def page(played: Played, dep_id: str, *, samples: bool = True) -> str:
    return render_report(
        dep_id, played.verdicts[dep_id], played.samples[dep_id] if samples else None
    )


# ------------------------------------------------------------------------------ HTML parsing


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    svg: str | None
    """id of the enclosing <svg>, if any."""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Every element with its attributes and enclosing plot; works on our HTML and Chromium's."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._svgs: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append(Element(tag, values, self._svgs[-1] if self._svgs else None))
        if tag == "svg":
            self._svgs.append(values.get("id", ""))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append(Element(tag, values, self._svgs[-1] if self._svgs else None))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._svgs:
            self._svgs.pop()

    def plots(self) -> dict[tuple[str, str], Element]:
        """``(kind, metric) -> <svg>`` for every plot."""
        out = {}
        for e in self.elements:
            if e.tag == "svg" and "plot" in e.classes:
                kinds = e.classes - {"plot"}
                assert len(kinds) == 1, e.attrs
                out[kinds.pop(), e.attrs["data-metric"]] = e
        return out

    def inside(self, svg: Element, tag: str | None = None, css: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.svg == svg.attrs["id"]
            and (tag is None or e.tag == tag)
            and (css is None or css in e.classes)
        ]

    def marks(self, svg: Element, tag: str, css: str) -> list[Element]:
        """Reference lines of a plot (not their legend samples): they carry their value."""
        return [e for e in self.inside(svg, tag, css) if "data-value" in e.attrs]


def headline(text: str) -> str:
    match = re.search(r'<h1 class="headline">(.*?)</h1>', text, re.DOTALL)
    assert match, "no headline"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def vertices(element: Element) -> int:
    """How many points a <path> or <polyline> has."""
    coords = element.attrs.get("d") or element.attrs.get("points") or ""
    return len(re.findall(r"-?\d+(?:\.\d+)?,-?\d+(?:\.\d+)?", coords))


# ---------------------------------------------------------------------------- the header


def test_rollback_header_names_the_failing_metric_and_its_numbers(played: Played) -> None:
    final = played.verdicts["payments-v3"][-1]
    failing = [m for m in final["metrics"] if m["outcome"] == "fail"]
    assert [m["metric"] for m in failing] == ["requests"]
    detail = failing[0]["detail"]
    text = page(played, "payments-v3")
    head = headline(text)
    assert head.startswith("ROLLBACK \u2014 critical requests: canary error ratio")
    assert (
        f"{detail['bad_ratio_canary']:.2%} vs baseline {detail['bad_ratio_baseline']:.2%}" in head
    )
    assert f"burn {detail['burn_canary']:.3g}x" in head
    assert f"{detail['rate_ratio']:.3g}x the baseline's rate (allowed 1.5x)" in head
    assert 'class="verdict-header decision-rollback"' in text
    assert html.escape(final["summary"]) in text
    for fact in (final["config_digest"], "default", "payments", final["window"]["start"]):
        assert html.escape(fact) in text
    assert "<title>coalmine report: payments-v3 \u2014 ROLLBACK</title>" in text


def test_distribution_rollback_header_gives_the_change_and_its_interval(played: Played) -> None:
    final = played.verdicts["search-v7"][-1]
    (failing,) = [m for m in final["metrics"] if m["outcome"] == "fail"]
    detail = failing["detail"]
    head = headline(page(played, "search-v7"))
    low, high = detail["relative_low"] * 100, detail["relative_high"] * 100
    assert head.startswith(f"ROLLBACK \u2014 latency_ms {detail['relative_change'] * 100:+.1f}%")
    assert f"(95% CI {low:+.1f}%..{high:+.1f}%), allowed +10%" in head
    assert f"median {detail['median_canary']:.4g} vs {detail['median_baseline']:.4g}" in head


def test_promote_header_and_the_latest_verdict_when_none_is_final(played: Played) -> None:
    history = played.verdicts["checkout-v42"]
    text = render_report("checkout-v42", history)
    assert headline(text) == "PROMOTE \u2014 all metrics within tolerance"
    assert 'class="verdict-header decision-promote"' in text
    interim = render_report("checkout-v42", history[:-1])
    assert headline(interim).startswith("CONTINUE \u2014 continue at")
    assert "latest verdict, not final" in interim
    assert 'class="verdict-header decision-continue"' in interim


# ------------------------------------------------------------------------------ the plots


def test_every_plot_kind_is_there_for_each_metric(played: Played) -> None:
    history = played.verdicts["payments-v3"]
    dom = Dom(page(played, "payments-v3"))
    plots = dom.plots()
    assert set(plots) == {
        ("ecdf", "latency_ms"),
        ("estimate", "latency_ms"),
        ("estimate", "requests"),
        ("burn", "requests"),
    }
    for svg in plots.values():
        assert dom.inside(svg, "title"), "every plot has an accessible title"
        assert svg.attrs["role"] == "img"
        assert dom.inside(svg, "text", "tick"), "axes have tick labels"
        assert dom.inside(svg, css="legend")

    ecdf = plots["ecdf", "latency_ms"]
    assert ecdf.attrs["data-x-scale"] == "log"  # lognormal latency spans more than 10x
    curves = {p.attrs["data-cohort"]: p for p in dom.inside(ecdf, "path", "series")}
    assert set(curves) == {"baseline", "canary"}
    for cohort, curve in curves.items():
        assert int(curve.attrs["data-n"]) == len(
            played.samples["payments-v3"]["latency_ms"][cohort == "canary"]
        )
        assert 50 < vertices(curve) <= MAX_CURVE_POINTS + 1

    # One estimate per verdict, with its interval, against the allowed change.
    estimate = plots["estimate", "latency_ms"]
    assert len(dom.inside(estimate, "circle", "estimate")) == len(history)
    assert len(dom.inside(estimate, "line", "interval")) == len(history)
    assert [t.attrs["data-value"] for t in dom.marks(estimate, "line", "tolerance")] == ["10"]
    assert dom.inside(estimate, "polygon", "interval-band")
    ratio = plots["estimate", "requests"]
    assert ratio.attrs["data-y-scale"] == "log"
    assert [t.attrs["data-value"] for t in dom.marks(ratio, "line", "tolerance")] == ["1.5"]
    markers = dom.inside(ratio, "circle", "estimate")
    assert "outcome-fail" in markers[-1].classes
    assert all("outcome-pass" in m.classes for m in markers[:-1])

    burn = plots["burn", "requests"]
    thresholds = {
        next(iter(t.classes - {"threshold"})): t.attrs["data-value"]
        for t in dom.marks(burn, "line", "threshold")
    }
    assert thresholds == {"fast": "14.4", "slow": "6"}
    keys = {p.attrs["data-key"] for p in dom.inside(burn, "polyline")}
    assert {"burn_canary", "burn_baseline", "fast_burn_short", "slow_burn_long"} <= keys
    for line in dom.inside(burn, "polyline"):
        assert vertices(line) == len(history)


def test_timeline_lists_every_verdict(played: Played) -> None:
    history = played.verdicts["checkout-v42"]
    text = page(played, "checkout-v42")
    rows = re.findall(r'<tr class="decision-(\w+)">(.*?)</tr>', text)
    assert [decision for decision, _ in rows] == [v["decision"] for v in history]
    for (_, row), verdict in zip(rows, history, strict=True):
        assert f"<td>{verdict['verdict_id']}</td>" in row
        assert f"<td>{verdict['time']}</td>" in row
        assert html.escape(verdict["summary"]) in row


def test_without_samples_there_is_no_ecdf_but_a_note(played: Played) -> None:
    text = page(played, "checkout-v42", samples=False)
    assert ("ecdf", "latency_ms") not in Dom(text).plots()
    assert "No samples given for this metric" in text


def test_a_large_cohort_keeps_the_page_small() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.lognormal(4.6, 0.5, 200_000)
    canary = rng.lognormal(4.7, 0.5, 200_000)
    text = render_report("big", [], {"latency_ms": (baseline.tolist(), canary.tolist())})
    assert len(text) < 100_000
    dom = Dom(text)
    ecdf = dom.plots()["ecdf", "latency_ms"]
    for curve in dom.inside(ecdf, "path", "series"):
        assert int(curve.attrs["data-n"]) == 200_000
        assert vertices(curve) <= MAX_CURVE_POINTS + 1
    assert headline(text) == "NO VERDICT \u2014 the input holds no verdict for this deployment"


def test_ecdf_axis_is_linear_unless_values_are_positive_and_span_ten_fold() -> None:
    for values, scale in (([-1.0, 0.5, 3.0], "linear"), ([2.0, 3.0, 19.0], "linear")):
        text = render_report("x", [], {"m": (values, [v + 1 for v in values])})
        assert Dom(text).plots()["ecdf", "m"].attrs["data-x-scale"] == scale
    text = render_report("x", [], {"m": ([1.0, 2.0], [30.0])})
    assert Dom(text).plots()["ecdf", "m"].attrs["data-x-scale"] == "log"


# ---------------------------------------------------------------------------- robustness


EVIL = "<script>alert('x')</script>"
EVIL_ATTR = '"><img src=x onerror=alert(1)>'


def test_strings_from_verdicts_are_escaped(played: Played) -> None:
    history = copy.deepcopy(played.verdicts["payments-v3"])
    for verdict in history:
        verdict["summary"] = EVIL
        verdict["verdict_id"] += EVIL_ATTR
        for key in ("service", "profile", "config_digest", "strategy", "time"):
            verdict[key] = EVIL
        verdict["decision"] = EVIL_ATTR if verdict["final"] else verdict["decision"]
        verdict["window"]["start"] = EVIL
        verdict["checks"] = {EVIL: {EVIL_ATTR: EVIL, "mismatch": True}}
        for entry in verdict["metrics"]:
            entry["metric"] = EVIL_ATTR + entry["metric"]
            entry["reason"] = EVIL
            entry["analyzer"] = EVIL
            entry["outcome"] = EVIL_ATTR if entry["outcome"] == "fail" else entry["outcome"]
            entry["detail"][EVIL] = EVIL
            entry["detail"]["direction"] = EVIL_ATTR
    samples = {EVIL_ATTR + "latency_ms": played.samples["payments-v3"]["latency_ms"]}
    text = render_report("payments-v3", history, samples)
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "&lt;script&gt;" in text
    dom = Dom(text)
    assert {e.tag for e in dom.elements}.isdisjoint({"script", "img", "iframe", "object"})
    for element in dom.elements:
        assert not any(name.startswith("on") for name in element.attrs), element
    assert (
        "estimate",
        EVIL_ATTR + "requests",
    ) in dom.plots()  # attribute values survive escaping intact


def _spoil(value: object, k: int) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return (math.nan, None, "inf", "-inf", "not a number", float("inf"), True)[k % 7]


def test_nan_none_and_missing_detail_values_do_not_crash(played: Played) -> None:
    history: list[Any] = copy.deepcopy(played.verdicts["payments-v3"])
    for i, verdict in enumerate(history):
        for j, entry in enumerate(verdict["metrics"]):
            detail = entry["detail"]
            for k, key in enumerate(list(detail)):
                detail[key] = _spoil(detail[key], i + j + k)
            for key in list(detail)[:: 3 + i]:  # an older version lacked some keys
                del detail[key]
        verdict["score"] = math.nan
        verdict["traffic_weight"] = "50%"
    del history[0]["window"]
    history[1]["time"] = "yesterday"  # no usable time: the x axis counts verdicts
    history[2]["metrics"] = "garbage"
    history.append({"verdict_id": "payments-v3/99"})  # nearly empty
    history.append("not even an object")
    samples: dict[str, Any] = {
        "latency_ms": ([math.nan, math.inf, 1.0, 2.0, 3.0], []),
        "requests": ([5.0] * 10, [5.0] * 3),  # every value tied
        "empty": ([], []),
        "broken": (["a", "b"], [1.0]),
    }
    text = render_report("payments-v3", history, samples)
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    coords = re.findall(r'\b(?:x|y|x1|x2|y1|y2|cx|cy|width|height|points|d)="([^"]*)"', text)
    assert coords
    assert not [c for c in coords if re.search(r"nan|inf", c, re.IGNORECASE)]
    plots = Dom(text).plots()
    assert {("estimate", "latency_ms"), ("estimate", "requests"), ("burn", "requests")} <= set(
        plots
    )
    assert ("ecdf", "empty") not in plots


def test_other_deployments_and_republished_verdicts_are_left_out(played: Played) -> None:
    mine = played.verdicts["checkout-v42"]
    mixed = [*played.verdicts["payments-v3"], *mine, mine[0], *played.verdicts["search-v7"]]
    text = render_report("checkout-v42", mixed)
    rows = re.findall(
        r'<tr class="decision-\w+"><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>', text
    )
    assert rows == [v["verdict_id"] for v in mine]
    assert headline(text).startswith("PROMOTE")


def test_no_verdicts_at_all() -> None:
    text = render_report("nothing-v1", [])
    assert headline(text).startswith("NO VERDICT")
    assert "No verdicts." in text
    assert Dom(text).plots() == {}


# ------------------------------------------------------------------------- headless Chromium


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def decode_png(data: bytes) -> np.ndarray:
    """RGB(A) pixels of an 8-bit, non-interlaced PNG as a (height, width, channels) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0), "8-bit, not interlaced"
            assert colour in {2, 6}, "RGB or RGBA"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            chunks.append(body)
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        method = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if method == 0:
            row = line
        elif method == 1:  # Sub: a running sum per channel
            row = np.cumsum(line.reshape(width, channels), axis=0).reshape(-1) % 256
        elif method == 2:  # Up
            row = (line + previous) % 256
        else:  # Average, Paeth: sequential along the row
            row = _unfilter_sequential(method, line.tolist(), previous.tolist(), channels)
        out[y] = row
        previous = np.asarray(row, dtype=np.int64)
    return out.reshape(height, width, channels)


def _unfilter_sequential(kind: int, line: list[int], up: list[int], bpp: int) -> np.ndarray:
    row = [0] * len(line)
    for i, value in enumerate(line):
        left = row[i - bpp] if i >= bpp else 0
        if kind == 3:
            row[i] = (value + (left + up[i]) // 2) & 255
            continue
        corner = up[i - bpp] if i >= bpp else 0
        p = left + up[i] - corner
        pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
        best = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
        row[i] = (value + best) & 255
    return np.asarray(row, dtype=np.int64)


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    distance = np.abs(pixels[..., :3].astype(np.int64) - np.asarray(rgb)).sum(axis=-1)
    close: np.ndarray = distance <= tolerance
    return close


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (/usr/bin/chromium); scripts/test installs it when run as"
    " root, or: apt-get install chromium",
)
@pytest.mark.timeout(240)
def test_headless_chromium_renders_the_plots(played: Played, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(page(played, "payments-v3"), encoding="utf-8")
    began = time.monotonic()

    # The DOM the browser built: every plot with its curves, none lost to a markup error.
    dom = Dom(chromium("--dump-dom", report.as_uri(), profile=tmp_path / "p1").stdout.decode())
    plots = dom.plots()
    assert set(plots) == {
        ("ecdf", "latency_ms"),
        ("estimate", "latency_ms"),
        ("estimate", "requests"),
        ("burn", "requests"),
    }
    ecdf_paths = dom.inside(plots["ecdf", "latency_ms"], "path", "series")
    assert len(ecdf_paths) == 2
    assert all(vertices(p) > 50 for p in ecdf_paths)
    for kind, metric in (("estimate", "latency_ms"), ("burn", "requests")):
        lines = dom.inside(plots[kind, metric], "polyline")
        assert lines
        assert max(vertices(line) for line in lines) == len(played.verdicts["payments-v3"])
    assert dom.inside(plots["estimate", "requests"], "circle", "estimate")

    # What it paints: the red rollback header, both cohorts' curves, many colours.
    shot = tmp_path / "report.png"
    chromium(
        "--hide-scrollbars",
        "--window-size=1000,1500",
        f"--screenshot={shot}",
        report.as_uri(),
        profile=tmp_path / "p2",
    )
    seconds = time.monotonic() - began
    data = shot.read_bytes()
    assert len(data) > 20_000
    pixels = decode_png(data)
    assert pixels.shape[:2] == (1500, 1000)
    header = pixels[:60]
    assert near(header, (0xB4, 0x23, 0x18)).mean() > 0.5, "the rollback header is red"
    body = pixels[300:]
    assert near(body, (0x25, 0x63, 0xEB)).sum() > 300, "the baseline's blue curve is drawn"
    assert near(body, (0xDC, 0x26, 0x26)).sum() > 300, "the canary's red curve is drawn"
    rgb = pixels[..., :3].astype(np.int64)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert colours.size > 100
    white = near(pixels, (255, 255, 255), 6).mean()
    assert 0.3 < white < 0.97, "neither blank nor a solid fill"
    print(f"chromium: dump-dom and screenshot in {seconds:.1f}s")  # noqa: T201


def test_a_ratio_passing_within_its_budget_is_not_drawn_in_a_regression_zone(
    played: Played,
) -> None:
    """A tiny baseline error rate makes the canary's 3x a pass within the SLO budget."""
    history = copy.deepcopy(played.verdicts["checkout-v42"])
    for verdict in history:
        for metric in verdict["metrics"]:
            if metric["metric"] == "requests":
                metric["outcome"] = "pass"
                metric["detail"] |= {"rate_ratio": 3.0, "rate_ratio_upper": 4.0}
                metric["detail"]["within_budget"] = True
    dom = Dom(render_report("checkout-v42", history, None))
    ratio = dom.plots()["estimate", "requests"]
    assert [t.attrs["data-value"] for t in dom.marks(ratio, "line", "tolerance")] == ["1.5"]
    assert not dom.inside(ratio, "rect", "tolerance-band")
    page_text = render_report("checkout-v42", history, None)
    assert "within its error budget, which passes it" in html.unescape(page_text)
    # A failing ratio keeps its shaded zone.
    failing = Dom(page(played, "payments-v3"))
    assert failing.inside(failing.plots()["estimate", "requests"], "rect", "tolerance-band")


# ------------------------------------------------------------ a baseline from the past

PAST_PROFILE = PROFILE.model_copy(update={"reference": ReferenceSpec(before=1800)})


def _service_traffic(start: float, end: float, version: str | None, seed: int) -> list[Record]:
    """Metric messages of service orders every 10 s (no cohort: told apart by time)."""
    rng = np.random.default_rng(seed)
    out = []
    for at in np.arange(start, end, 10.0):
        base = {"service": "orders", "time": format_time(float(at))}
        if version is not None:
            base["version"] = version
        batch = [
            base | {"metric": "latency_ms", "values": rng.lognormal(4.6, 0.3, 20).tolist()},
            base | {"metric": "requests", "good": 500, "total": 500},
        ]
        out.append(Record(TopicsSettings().metrics, orjson.dumps(batch), b"orders"))
    return out


def judge_past(deploys: list[tuple[float, dict[str, Any]]], metrics: list[Record]) -> list[Any]:
    """Verdicts (as published) of deploy events and metric records, in event-time order."""
    topics = TopicsSettings()
    router = Router({"default": PAST_PROFILE}, topics)
    timed = [(t, 0, Record(topics.deployments, orjson.dumps(obj), b"orders")) for t, obj in deploys]
    timed += [(parse_time(orjson.loads(r.value)[0]["time"]), 1, r) for r in metrics]
    verdicts = []
    for _, _, record in sorted(timed, key=lambda item: (item[0], item[1])):
        effects = router.handle([record], now=0.0)
        verdicts.extend(orjson.loads(encode_verdict(v)) for v in effects.verdicts)
    return verdicts


@pytest.fixture(scope="module")
def migration() -> list[dict[str, Any]]:
    """A migration phase at T0 + 30 min, judged against the 30 minutes before it."""
    change = T0 + 1800
    started = {
        "event": "started",
        "deployment_id": "orders-expand",
        "service": "orders",
        "time": format_time(change),
        "strategy": "migration",
        "phase": "expand",
    }
    return judge_past([(change, started)], _service_traffic(T0, change + 600, None, seed=5))


@pytest.fixture(scope="module")
def switch() -> list[dict[str, Any]]:
    """A blue-green deployment: a 10-minute preview from T0, then the switch to green."""
    at = T0 + 600
    base = {"deployment_id": "orders-green", "service": "orders", "strategy": "blue_green"}
    preview = base | {
        "event": "started",
        "time": format_time(T0),
        "phase": "preview",
        "baseline": {"version": "blue"},
        "canary": {"version": "green"},
        "traffic_weight": 0,
    }
    switched = base | {"event": "step", "time": format_time(at), "phase": "switched"}
    metrics = [
        *_service_traffic(T0 - 1200, at, "blue", seed=6),
        *_service_traffic(T0, at, "green", seed=7),
        *_service_traffic(at, at + 600, "green", seed=8),
    ]
    return judge_past([(T0, preview), (at, switched)], metrics)


def svg_text(text: str, svg: Element) -> str:
    """The markup of one plot."""
    start = text.index(f'id="{svg.attrs["id"]}"')
    return text[start : text.index("</svg>", start)]


def x_ticks(text: str, svg: Element) -> dict[str, float]:
    """A plot's x tick labels and their pixel positions."""
    found = re.findall(
        r'<text class="tick x" x="([\d.]+)"[^>]*>([^<]*)</text>', svg_text(text, svg)
    )
    return {html.unescape(label): float(x) for x, label in found}


def last_verdict_x(dom: Dom, svg: Element) -> float:
    """Where a time plot draws the last verdict: its last marker, or its burn line's end."""
    markers = dom.inside(svg, "circle", "estimate")
    if markers:
        return float(markers[-1].attrs["cx"])
    (line,) = [e for e in dom.inside(svg, "polyline") if e.attrs.get("data-key") == "burn_canary"]
    return max(float(x) for x in re.findall(r"([\d.]+),[\d.]+", line.attrs["points"]))


def facts(text: str) -> dict[str, str]:
    found = re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", text)
    return {html.unescape(k): html.unescape(v) for k, v in found}


TIME_PLOTS = (("estimate", "latency_ms"), ("estimate", "requests"), ("burn", "requests"))


def test_a_migration_draws_its_reference_window_before_the_change(
    migration: list[dict[str, Any]],
) -> None:
    reference = migration[-1]["checks"]["reference"]
    assert reference == {
        "baseline": "past",
        "window_start": format_time(T0),
        "window_end": format_time(T0 + 1800),
    }
    text = render_report("orders-expand", migration)
    assert facts(text)["compared with"] == (
        "the service's own past, 2027-01-15 08:00\u201308:30 UTC (the 30m before the change)"
    )
    assert "window_start" not in text  # stated as a fact, not as a raw check
    dom = Dom(text)
    plots = dom.plots()
    for key in TIME_PLOTS:
        svg = plots[key]
        ticks = x_ticks(text, svg)
        (group,) = dom.inside(svg, "g", "past-reference")
        assert (group.attrs["data-start"], group.attrs["data-end"]) == (
            reference["window_start"],
            reference["window_end"],
        )
        (band,) = dom.inside(svg, "rect", "reference")
        left, width = float(band.attrs["x"]), float(band.attrs["width"])
        assert left == pytest.approx(ticks["\u221230m"], abs=0.11)  # the window's start
        assert left + width == pytest.approx(ticks["0s"], abs=0.11)  # the change
        (live,) = dom.inside(svg, "rect", "live")
        assert float(live.attrs["x"]) == pytest.approx(ticks["0s"], abs=0.11)
        end = float(live.attrs["x"]) + float(live.attrs["width"])
        assert end == pytest.approx(last_verdict_x(dom, svg), abs=0.11)
        described = html.unescape(svg_text(text, svg))
        assert "the shaded reference window (2027-01-15 08:00\u201308:30 UTC)" in described
    assert ".window-band.reference" in text  # its style


def test_a_switch_draws_the_reference_before_the_switch_and_the_preview_has_none(
    switch: list[dict[str, Any]],
) -> None:
    preview = [v for v in switch if "reference" not in v["checks"]]
    switched = [v for v in switch if "reference" in v["checks"]]
    assert preview
    assert switched
    assert switch[: len(preview)] == preview  # the preview comes first
    text = render_report("orders-green", switch)
    assert facts(text)["compared with"] == (
        "the service's own past, 2027-01-15 07:40\u201308:10 UTC (the 30m before the change)"
    )
    dom = Dom(text)
    estimate = dom.plots()["estimate", "latency_ms"]
    ticks = x_ticks(text, estimate)
    (band,) = dom.inside(estimate, "rect", "reference")
    (live,) = dom.inside(estimate, "rect", "live")
    (change,) = dom.inside(estimate, "line", "change")
    # The axis counts from the preview's start: the reference runs from 20 minutes before
    # it to the switch, 10 minutes after it; the live window from the switch on.
    assert float(band.attrs["x"]) == pytest.approx(ticks["\u221220m"], abs=0.11)
    switch_x = float(band.attrs["x"]) + float(band.attrs["width"])
    assert switch_x == pytest.approx(ticks["10m"], abs=0.11)
    assert float(live.attrs["x"]) == float(change.attrs["x1"]) == pytest.approx(switch_x, abs=0.11)
    markers = [float(c.attrs["cx"]) for c in dom.inside(estimate, "circle", "estimate")]
    assert len(markers) == len(switch)
    assert all(x < switch_x for x in markers[: len(preview)])
    assert all(x > switch_x for x in markers[len(preview) :])
    assert float(live.attrs["x"]) + float(live.attrs["width"]) == pytest.approx(
        markers[-1], abs=0.11
    )
    # The page of the preview alone compared side by side: no reference window.
    during = render_report("orders-green", preview)
    assert "past-reference" not in during
    assert "compared with" not in during


def test_a_concurrent_baseline_has_no_reference_window(played: Played) -> None:
    for dep_id in played.verdicts:
        text = page(played, dep_id)
        assert "compared with" not in text
        assert "window-band" not in text  # neither a band nor its style
        dom = Dom(text)
        for svg in dom.plots().values():
            assert not dom.inside(svg, "g", "past-reference")
            assert not [t for t in x_ticks(text, svg) if t.startswith("\u2212")]


def test_a_malformed_or_untimed_reference_draws_no_band(migration: list[dict[str, Any]]) -> None:
    spoilt = copy.deepcopy(migration)
    for verdict in spoilt:
        verdict["checks"]["reference"]["window_start"] = EVIL
    text = render_report("orders-expand", spoilt)
    assert "<script" not in text.lower()
    assert facts(text)["compared with"] == (
        f"the service's own past, {EVIL} \u2192 {format_time(T0 + 1800)}"
    )
    assert "past-reference" not in text

    inverted = copy.deepcopy(migration)
    for verdict in inverted:
        reference = verdict["checks"]["reference"]
        reference["window_start"], reference["window_end"] = (
            reference["window_end"],
            reference["window_start"],
        )
    assert "past-reference" not in render_report("orders-expand", inverted)

    untimed = copy.deepcopy(migration)
    untimed[0]["time"] = "yesterday"  # the x axes count verdicts: no time to place it on
    text = render_report("orders-expand", untimed)
    assert "past-reference" not in text
    assert facts(text)["compared with"].startswith("the service's own past, 2027-01-15 08:00")

    other = copy.deepcopy(migration)
    for verdict in other:
        verdict["checks"]["reference"]["baseline"] = "elsewhere"
    text = render_report("orders-expand", other)
    assert "compared with" not in text
    assert "past-reference" not in text
    assert "reference: baseline elsewhere, window_start" in html.unescape(text)


def test_actions_are_listed_escaped_and_absent_when_not_given() -> None:
    verdict = {"verdict_id": "d/1", "deployment_id": "d", "decision": "rollback", "final": True}
    outcome = {
        "action": "pager",
        "kind": "webhook",
        "verdict_id": "d/1",
        "outcome": "failed",
        "attempts": 3,
        "status": 500,
        "error": "<script>alert(1)</script>",
    }
    page = render_report("d", [verdict], actions=[outcome])
    assert "<td>pager</td><td>webhook</td><td>d/1</td><td>failed</td><td>3</td><td>500</td>" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
    assert 'id="actions"' not in render_report("d", [verdict])
    assert "None triggered." in render_report("d", [verdict], actions=[])
