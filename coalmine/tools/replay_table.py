"""How ``coalmine replay`` shows a replay: the table of decisions, the comparison, a summary.

A table fits the console it is printed on. On a terminal that is the terminal's width;
when standard output is not a terminal (a file, a pipe, CI logs) it is ``COLUMNS`` when
set, else :data:`PIPED_WIDTH`. While a table would not fit with its summary readable
(:data:`SUMMARY_MIN` columns), its least needed columns are left out, one at a time (the
service first); the summary wraps within the width.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rich.console import JustifyMethod

    from coalmine.tools.replay import Difference, Outcome, ReplayResult, Run

__all__ = [
    "PIPED_WIDTH",
    "SUMMARY_MIN",
    "console",
    "problems_lines",
    "render_comparison",
    "render_outcomes",
    "show",
    "span",
    "summary_line",
]

_Row = TypeVar("_Row")

PIPED_WIDTH = 100
"""Columns of the output when standard output is not a terminal and ``COLUMNS`` is unset."""

SUMMARY_MIN = 40
"""Fewest columns a verdict's summary is given before other columns are left out."""

_COLOURS = {
    "continue": "cyan",
    "promote": "green",
    "rollback": "red",
    "inconclusive": "yellow",
    "open": "blue",
}


def console() -> Console:
    """A console on standard output: a terminal's own width, else ``COLUMNS`` or 100."""
    out = Console(highlight=False)
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS", "").isdigit():
        out.width = PIPED_WIDTH
    return out


def span(seconds: float | None) -> str:
    """A duration the way people write it: ``5m``, ``4m30s``, ``1h2m``, ``-``."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{secs}s" if secs or not (hours or minutes) else "")
    return "".join(parts)


def summary_line(result: ReplayResult) -> str:
    """One line: deployments per decision, records, verdicts, speed."""
    counts = result.decisions()
    decided = ", ".join(f"{n} {d}" for d, n in sorted(counts.items(), key=lambda i: -i[1]))
    rate = len(result.outcomes) / result.seconds * 60 if result.seconds > 0 else 0.0
    return (
        f"{len(result.outcomes)} deployments ({decided or 'none'}); {result.records} records,"
        f" {result.verdicts} verdicts in {result.seconds:.2f}s ({rate:,.0f} deployments/min)"
    )


def problems_lines(result: ReplayResult) -> list[str]:
    """Invalid input: the count per reason, then the first examples."""
    total = sum(result.invalid.values())
    if not total:
        return ["no invalid input"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in result.invalid.most_common())
    lines = [f"{total} invalid (as the dead-letter topic would get them): {reasons}"]
    lines += [f"  {example}" for example in result.examples]
    return lines


def show(out: Console, run: Run, names: tuple[str, str]) -> None:
    """The whole text output of a replay: its table, summary, problems and comparison."""
    render_outcomes(out, run.first, f"replay with {names[0]}")
    out.print(summary_line(run.first))
    for line in problems_lines(run.first):
        out.print(line, markup=False)
    if run.second is not None:
        out.print()
        render_comparison(out, run, names, run.differences)


# ------------------------------------------------------------------------ tables


@dataclass(frozen=True, slots=True)
class _Column(Generic[_Row]):
    """A column of a table: its header, its cell for a row, and how the cell fits.

    A cell that wraps needs as many columns as its longest word, and at least ``least``;
    any other the whole of its text.
    """

    name: str
    cell: Callable[[_Row], Text]
    wrap: bool = False
    justify: JustifyMethod = "left"
    least: int = 0


def _least_width(columns: Sequence[_Column[_Row]], rows: Sequence[_Row]) -> int:
    """The narrowest the table can be with no text cut: borders, padding and each column's."""
    total = 3 * len(columns) + 1  # a border and a space either side of every cell
    for column in columns:
        texts = [column.name, *(column.cell(row).plain for row in rows)]
        if column.wrap:
            words = (cell_len(word) for text in texts for word in text.split())
            total += max([column.least, *words])
        else:
            total += max(cell_len(text) for text in texts)
    return total


def _table(
    out: Console, columns: Sequence[_Column[_Row]], optional: Sequence[str], rows: Sequence[_Row]
) -> Table:
    """A table of ``rows``, without the ``optional`` columns (in order) it needs to fit."""
    shown = list(columns)
    for name in optional:
        if _least_width(shown, rows) <= out.width:
            break
        shown = [column for column in shown if column.name != name]
    table = Table()
    for column in shown:
        table.add_column(column.name, no_wrap=not column.wrap, justify=column.justify)
    for row in rows:
        table.add_row(*(column.cell(row) for column in shown))
    return table


def _decision(decision: str) -> Text:
    return Text(decision, style=_COLOURS.get(decision, "white"))


def _summary(outcome: Outcome) -> Text:
    if outcome.final or outcome.decision == "open":
        return Text(outcome.summary)
    return Text(f"ended by the pipeline ({outcome.decision})")


_OUTCOME_COLUMNS: tuple[_Column[Outcome], ...] = (
    _Column("deployment", lambda o: Text(o.deployment_id)),
    _Column("service", lambda o: Text(o.service)),
    _Column("decision", lambda o: _decision(o.decision)),
    _Column("final verdict", lambda o: Text((o.verdict_id or "-") if o.final else "-")),
    _Column("time to decision", lambda o: Text(span(o.time_to_decision)), justify="right"),
    _Column("summary", _summary, wrap=True, least=SUMMARY_MIN),
)
_OUTCOME_OPTIONAL = ("service", "final verdict", "time to decision")
"""Left out in this order while the table does not fit: the deployment usually names its
service, the time to decision tells which judgement was final, and the summary (why)
matters more than the time."""


def render_outcomes(out: Console, result: ReplayResult, title: str) -> None:
    """The title, then the table of final decisions per deployment."""
    out.print(Text(title, style="table.title"))
    rows = list(result.outcomes.values())
    out.print(_table(out, _OUTCOME_COLUMNS, _OUTCOME_OPTIONAL, rows))


def _judged(outcome: Outcome | None) -> Text:
    """A comparison cell: the decision and, when final, the verdict and its time."""
    if outcome is None:
        return Text("not started", style="dim")
    cell = _decision(outcome.decision)
    if outcome.final:
        cell.append(f" {outcome.verdict_id} ({span(outcome.time_to_decision)})")
    return cell


def render_comparison(
    out: Console, run: Run, names: tuple[str, str], differences: Sequence[Difference]
) -> None:
    """The deployments two configurations decided differently, and how many."""
    assert run.second is not None  # noqa: S101 - only called with a comparison
    columns: tuple[_Column[Difference], ...] = (
        _Column("deployment", lambda d: Text(d.deployment_id)),
        _Column("service", lambda d: Text(d.service)),
        _Column("difference", lambda d: Text(d.kind)),
        _Column(names[0], lambda d: _judged(d.first), wrap=True),
        _Column(names[1], lambda d: _judged(d.second), wrap=True),
    )
    if differences:
        out.print(Text(f"{names[0]} vs {names[1]}", style="table.title"))
        out.print(_table(out, columns, ("service", "difference"), differences))
    by_kind = Counter(d.kind for d in differences)
    total = len(set(run.first.outcomes) | set(run.second.outcomes))
    out.print(
        f"{len(differences)} of {total} deployments decided differently"
        f" ({by_kind['decision']} by decision, {by_kind['timing']} by timing only)",
        highlight=False,
    )
