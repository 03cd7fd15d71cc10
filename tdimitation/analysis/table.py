"""The analysis table: one row per group (algorithm) x environment, over the runs' scores.

Each run contributes one score, its final return (and its normalised score); a row
aggregates its runs (seeds) into the mean and the IQM, each with a stratified-bootstrap
95 % interval. The rows, a comparison of two groups and the notes are written as markdown,
CSV and JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tdimitation.analysis.statistics import (
    DEFAULT_REPS,
    improvement_interval,
    interval_estimate,
    iqm,
    mean,
)
from tdimitation.analysis.store import RunScore
from tdimitation.utils import atomic_path

#: Columns of the CSV file (and keys of the JSON rows), in order.
COLUMNS = (
    "group",
    "env",
    "runs",
    "episodes",
    "mean",
    "mean_low",
    "mean_high",
    "iqm",
    "iqm_low",
    "iqm_high",
    "norm_mean",
    "norm_mean_low",
    "norm_mean_high",
    "norm_iqm",
    "norm_iqm_low",
    "norm_iqm_high",
    "random_return",
    "expert_return",
)


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """The generator of one statistic: from the analysis seed and what it is about.

    Seeding per statistic (not one stream in table order) keeps a row's intervals the
    same when other rows are added or removed.
    """
    return np.random.default_rng([seed, *(zlib.crc32(label.encode()) for label in labels)])


def grouped(scores: Sequence[RunScore]) -> dict[tuple[str, str], list[RunScore]]:
    """The scores by (group, env), groups and envs in sorted order, runs by seed."""
    groups: dict[tuple[str, str], list[RunScore]] = {}
    for score in scores:
        groups.setdefault((score.group, score.env), []).append(score)
    return {
        key: sorted(groups[key], key=lambda s: (str(s.seed).zfill(12), s.run_id))
        for key in sorted(groups)
    }


def _estimates(values: list[float], seed: int, labels: tuple[str, ...], reps: int) -> dict:
    column = np.asarray(values, dtype=np.float64)[:, None]  # [runs, 1 task]
    out = {}
    for name, aggregate in (("mean", mean), ("iqm", iqm)):
        point, (low, high) = interval_estimate(
            column, aggregate, rng_for(seed, name, *labels), reps
        )
        out |= {name: float(point), f"{name}_low": float(low), f"{name}_high": float(high)}
    return out


def table_rows(
    scores: Sequence[RunScore], seed: int = 0, reps: int = DEFAULT_REPS
) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's rows (keys :data:`COLUMNS`) and its notes.

    Normalised columns are None for a row whose runs lack a random or expert return
    (demonstrations collected before these were measured, or no demonstrations at all),
    with a note saying so.
    """
    rows, notes = [], []
    for (group, env), runs in grouped(scores).items():
        labels = (group, env)
        row: dict[str, Any] = {"group": group, "env": env, "runs": len(runs)}
        row["episodes"] = sum(r.episodes for r in runs)
        row |= _estimates([r.final_return for r in runs], seed, labels, reps)
        normalised = [r.normalised for r in runs]
        if all(v is not None for v in normalised):
            row |= {f"norm_{k}": v for k, v in _estimates(normalised, seed, labels, reps).items()}
            randoms = {r.random_return for r in runs}
            experts = {r.expert_return for r in runs}
            row["random_return"] = randoms.pop() if len(randoms) == 1 else None
            row["expert_return"] = experts.pop() if len(experts) == 1 else None
        else:
            row |= {key: None for key in COLUMNS if key.startswith("norm_")}
            row["random_return"] = row["expert_return"] = None
            missing = sum(v is None for v in normalised)
            notes.append(
                f"{group} on {env}: no normalised score ({missing} of {len(runs)} runs have no "
                "random-policy and expert return: they learnt from no demonstrations, or from "
                "a dataset collected before these were measured)"
            )
        rows.append(row)
    return rows, notes


def improvement_rows(
    scores: Sequence[RunScore], x: str, y: str, seed: int = 0, reps: int = DEFAULT_REPS
) -> list[dict[str, Any]]:
    """P(X > Y) of the final return per env both groups ran on, with its 95 % interval."""
    groups = grouped(scores)
    rows = []
    for env in sorted({env for _, env in groups}):
        if (x, env) not in groups or (y, env) not in groups:
            continue
        xs = np.array([[r.final_return] for r in groups[(x, env)]])
        ys = np.array([[r.final_return] for r in groups[(y, env)]])
        point, (low, high) = improvement_interval(xs, ys, rng_for(seed, "poi", x, y, env), reps)
        rows.append(
            {
                "x": x,
                "y": y,
                "env": env,
                "runs_x": len(xs),
                "runs_y": len(ys),
                "probability": point,
                "low": float(low),
                "high": float(high),
            }
        )
    return rows


# ------------------------------------------------------------------ formatting
def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    low, high = row[f"{key}_low"], row[f"{key}_high"]
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(
    rows: Sequence[dict[str, Any]],
    notes: Sequence[str],
    improvements: Sequence[dict[str, Any]] = (),
    group_title: str = "algorithm",
) -> str:
    """The table (and the comparison, when given) as markdown, notes below."""
    lines = [
        f"| {group_title} | env | runs | episodes | mean [95% CI] | IQM [95% CI] | "
        "normalised mean [95% CI] | normalised IQM [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['group']} | {row['env']} | {row['runs']} | {row['episodes']} | "
            f"{_cell(row, 'mean', 1)} | {_cell(row, 'iqm', 1)} | "
            f"{_cell(row, 'norm_mean', 3)} | {_cell(row, 'norm_iqm', 3)} |"
        )
    if improvements:
        lines += [
            "",
            "| X | Y | env | runs X | runs Y | P(X > Y) [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for imp in improvements:
            lines.append(
                f"| {imp['x']} | {imp['y']} | {imp['env']} | {imp['runs_x']} | "
                f"{imp['runs_y']} | {imp['probability']:.3f} [{imp['low']:.3f}, "
                f"{imp['high']:.3f}] |"
            )
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_outputs(
    out: str | Path,
    rows: Sequence[dict[str, Any]],
    notes: Sequence[str],
    improvements: Sequence[dict[str, Any]],
    scores: Sequence[RunScore],
    settings: dict[str, Any],
    text: str,
) -> list[Path]:
    """Write ``analysis.md``, ``analysis.csv`` and ``analysis.json`` into ``out``, atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    document = {
        "settings": settings,
        "table": list(rows),
        "improvement": list(improvements),
        "notes": list(notes),
        "runs": [asdict(s) | {"normalised": s.normalised} for s in scores],
    }
    contents = {
        "analysis.md": text,
        "analysis.csv": buffer.getvalue(),
        "analysis.json": json.dumps(document, indent=2) + "\n",
    }
    written = []
    for name, content in contents.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(content)
        written.append(out / name)
    return written


__all__ = [
    "COLUMNS",
    "grouped",
    "improvement_rows",
    "markdown",
    "rng_for",
    "table_rows",
    "write_outputs",
]
