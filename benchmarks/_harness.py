"""What every benchmark shares: fair rounds, honest summaries, plots.

The rules, in one place so that no script can forget one:

* **One warm-up, then alternating rounds.** :func:`alternate` runs every
  system once untimed (imports, caches, code paths), then ``rounds`` rounds
  in which each system runs once, the order rotated every round, so that a
  slow phase of the machine hits every system alike.
* **Medians and spread.** :class:`Samples` keeps every round's figure;
  tables give the median and the range (min to max) over the rounds.
* **Ratios per round.** A ratio between two systems is the median of the
  per-round ratios (both measured close together in time), with its range.
* **Plots on request.** ``--plot`` (see :func:`arguments`) makes the scripts
  write PNG charts with matplotlib into ``docs/benchmarks/_images``;
  matplotlib is imported only then.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Where ``--plot`` writes its charts: the docs' benchmark pages show them.
IMAGES = ROOT / "docs" / "benchmarks" / "_images"


def arguments(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes.

    ``--quick`` (a short smoke run), ``--rounds R``, ``--plot`` (write PNG
    charts). Scripts add their own options to it.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds after the warm-up")
    parser.add_argument(
        "--plot",
        action="store_true",
        help=f"also write PNG charts to {IMAGES.relative_to(ROOT)}",
    )
    parser.set_defaults(**defaults)
    return parser


def machine() -> str:
    """One line naming what the figures were measured on, and how busy it was."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"CPython {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load}"
    )


@dataclass
class Measurement:
    """What one timed run gives: its wall and CPU seconds."""

    wall: float
    cpu: float


def measure(run: Callable[[], object]) -> Measurement:
    """Time ``run()``: wall clock and this process's CPU time.

    CPU time counts the work this process did, so other processes on a busy
    machine disturb it less than the wall clock; it does not count time
    spent waiting (in ``epoll``, or for a child process).
    """
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return Measurement(time.perf_counter() - wall, time.process_time() - cpu)


@dataclass
class Samples:
    """Every round's figure for each system, in the order they were measured."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, system: str, value: float) -> None:
        self.values.setdefault(system, []).append(value)

    def median(self, system: str) -> float:
        return statistics.median(self.values[system])

    def spread(self, system: str) -> tuple[float, float]:
        return min(self.values[system]), max(self.values[system])

    def ratios(self, system: str, baseline: str) -> list[float]:
        """Per-round ratios ``system / baseline`` (rounds measured side by side)."""
        return [a / b for a, b in zip(self.values[system], self.values[baseline], strict=True) if b]

    def ratio(self, system: str, baseline: str) -> float:
        """The median of the per-round ratios."""
        return statistics.median(self.ratios(system, baseline))


def alternate(
    systems: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every system once per round, in an order rotated each round.

    With ``warmup``, every system runs once first and its result is thrown
    away. Returns one dict per round: system -> what its callable returned.
    """
    names = list(systems)
    if warmup:
        for name in names:
            systems[name]()
    results: list[dict[str, Any]] = []
    for r in range(rounds):
        shift = r % len(names)
        got: dict[str, Any] = {}
        for name in names[shift:] + names[:shift]:
            got[name] = systems[name]()
        results.append(got)
        if progress:
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def collect(results: Iterable[Mapping[str, Any]], key: Callable[[Any], float]) -> Samples:
    """One :class:`Samples` from :func:`alternate`'s results, ``key`` picking the figure."""
    samples = Samples()
    for got in results:
        for name, value in got.items():
            samples.add(name, key(value))
    return samples


def fmt_range(low: float, high: float, spec: str) -> str:
    return f"{low:{spec}}-{high:{spec}}"


def table(
    samples: Samples,
    *,
    unit: str,
    spec: str = ".3f",
    baselines: Sequence[str] = (),
    scale: float = 1.0,
) -> str:
    """A plain-text table: per system the median, its range, and ratios.

    ``scale`` multiplies every figure (1e3 for milliseconds, say); each
    baseline adds a column ``system / baseline`` (median of the per-round
    ratios, and their range).
    """
    width = max(len(name) for name in samples.values) + 2
    column = max([28, *(len(base) + 4 for base in baselines)])
    head = f"{'system':<{width}}{unit + ' (median)':>18}{'range':>22}"
    for base in baselines:
        head += f"{'/ ' + base:>{column}}"
    lines = [head]
    for name in samples.values:
        low, high = samples.spread(name)
        line = (
            f"{name:<{width}}{samples.median(name) * scale:>18{spec}}"
            f"{fmt_range(low * scale, high * scale, spec):>22}"
        )
        for base in baselines:
            if base == name or base not in samples.values:
                line += f"{'':>{column}}"
                continue
            ratios = samples.ratios(name, base)
            cell = f"{statistics.median(ratios):.3f} ({fmt_range(min(ratios), max(ratios), '.3f')})"
            line += f"{cell:>{column}}"
        lines.append(line)
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on demand)."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        sys.exit("--plot needs matplotlib: pip install matplotlib (nox -s bench installs it)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, name: str) -> Path:
    """Write ``figure`` as ``docs/benchmarks/_images/<name>.png``; return the path."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return path


def bar_chart(
    name: str,
    title: str,
    samples: Samples,
    *,
    label: str,
    scale: float = 1.0,
) -> Path:
    """Medians as horizontal bars, the min-to-max range as error bars."""
    plt = pyplot()
    names = list(samples.values)
    figure, axes = plt.subplots(figsize=(9.5, 1.2 + 0.45 * len(names)))
    medians = [samples.median(n) * scale for n in names]
    lows = [m - samples.spread(n)[0] * scale for m, n in zip(medians, names, strict=True)]
    highs = [samples.spread(n)[1] * scale - m for m, n in zip(medians, names, strict=True)]
    axes.barh(names, medians, xerr=[lows, highs], capsize=4, color="tab:blue")
    axes.invert_yaxis()  # the first system on top, as in the tables
    axes.set_xlabel(label)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return save(figure, name)


def line_chart(
    name: str,
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
) -> Path:
    """One line per system (throughput against workers, say)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.8))
    for label, ys in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    if log_x:
        axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    highest = max((y for ys in series.values() for y in ys), default=1.0)
    axes.set_ylim(bottom=0, top=highest * 1.15)  # room above the highest line
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return save(figure, name)


def cdf_chart(name: str, title: str, series: Mapping[str, Sequence[float]], *, xlabel: str) -> Path:
    """Empirical CDFs, one per system (latencies, say), on a log x axis."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.8))
    for label, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, ys, where="post", label=label)
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of jobs")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    return save(figure, name)
