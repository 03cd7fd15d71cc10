"""The training progress bar: the algorithm's own budget, its rate and ETA, its figures.

Lightning's bars count batches of the dataloader, which for tdimitation's algorithms are
rounds, blocks or iterations whose number a resumed run does not know in advance (BC's
dataloader deliberately has no length). :class:`BudgetProgressBar` counts what the run's
budget counts instead (:meth:`training_budget`: frames, batches, rounds, queries,
iterations), from what is already done, so a resumed run starts where it stopped and its
ETA covers only what is left. The postfix holds the figures the algorithm names in its
``progress_figures`` (metric key → label), read from ``trainer.callback_metrics``, so the
bar shows figures without changing what is logged. Everything printed, warned or logged to
the terminal while the bar runs is written above it, so the bar stays one line.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

#: The singular of each budget unit, for slow rates ("12.5 s/round").
_SINGULAR = {
    "frames": "frame",
    "batches": "batch",
    "rounds": "round",
    "queries": "query",
    "iterations": "iteration",
    "epochs": "epoch",
}


def compact_number(value: float) -> str:
    """A figure as a user reads it: integers without ``.0``, others to a sensible precision.

    ``1024.0`` → ``"1024"``, ``487.25`` → ``"487.2"``, ``0.38912`` → ``"0.389"``.
    """
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _rate_text(rate: float | None, unit: str) -> str:
    if not rate:
        return f"? {unit}/s"
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.1f} {unit}/s"
    return f"{1 / rate:.1f} s/{_SINGULAR.get(unit, unit)}"


class _BudgetTqdm(Tqdm):
    """A tqdm bar with integer counts (thousands separated) and a rate in the budget's unit."""

    @property
    def format_dict(self) -> dict[str, Any]:
        values = super().format_dict
        n, total, elapsed = values["n"], values["total"], values["elapsed"]
        # Over this fit only: a resumed run's initial count was not done at this rate.
        done_here = n - values.get("initial", 0)
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        values["rate"] = rate
        values["counts"] = f"{int(n):,}" + (f"/{int(total):,}" if total else "")
        values["speed"] = _rate_text(rate, values["unit"])
        return values


class _AboveBar:
    """A text stream whose complete lines are written above the progress bar.

    Stands in for ``sys.stdout``/``sys.stderr`` (and the logging handlers writing to them)
    while the bar runs; a partial line waits for its newline (or the end of the fit).
    """

    def __init__(self, stream: TextIO, bar_file: TextIO) -> None:
        self.stream = stream
        self._bar_file = bar_file
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            self._write_above(lines + "\n")
        return len(text)

    def _write_above(self, text: str) -> None:
        # Clears the bars drawn on the bar's file, writes, and draws them again.
        with Tqdm.external_write_mode(file=self._bar_file):
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def finish(self) -> None:
        """Write what is left of a partial line."""
        if self._pending:
            self._write_above(self._pending)
            self._pending = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _WritesAboveBar:
    """Routes ``sys.stdout``, ``sys.stderr`` and the terminal's logging handlers above a bar."""

    def __init__(self, bar_file: TextIO) -> None:
        self._bar_file = bar_file
        self._saved_std: tuple[TextIO, TextIO] | None = None
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []
        self._proxies: list[_AboveBar] = []

    def start(self) -> None:
        if self._saved_std is not None:
            return
        stdout, stderr = sys.stdout, sys.stderr
        self._saved_std = (stdout, stderr)
        proxies = {id(stdout): _AboveBar(stdout, self._bar_file)}
        proxies[id(stderr)] = proxies.get(id(stderr)) or _AboveBar(stderr, self._bar_file)
        sys.stdout, sys.stderr = proxies[id(stdout)], proxies[id(stderr)]
        # Handlers keep the stream they were created with (MLflow's, Lightning's, the
        # root's): those writing to the terminal's streams write above the bar too.
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler and id(handler.stream) in proxies:
                    self._handlers.append((handler, handler.stream))
                    handler.setStream(proxies[id(handler.stream)])
        self._proxies = list({id(p): p for p in proxies.values()}.values())

    def stop(self) -> None:
        if self._saved_std is None:
            return
        for proxy in self._proxies:
            proxy.finish()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        sys.stdout, sys.stderr = self._saved_std
        self._saved_std, self._handlers, self._proxies = None, [], []


class BudgetProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counted in the algorithm's budget and showing its figures.

    For a module with ``training_budget()`` (every tdimitation algorithm) the training bar
    counts the budget's unit (``PPO: 38%|███ | 4,096/10,240 frames [00:03<00:05, 1,210
    frames/s, return=21.4]``): total, done (a resumed run starts at what its checkpoint had
    done; rate and ETA count this fit only), and the module's ``progress_figures`` (metric
    key → label) as they were last logged. Other modules get Lightning's bar. Writes to
    stderr; while training, lines printed, warned or logged to the terminal appear above
    the bar. The algorithms use it by default (see
    :class:`~tdimitation.callbacks.FitCallbacks`).

    Args:
        refresh_rate: redraw after every this many training batches (0: no bar).
        process_position: line offset of the bar (several bars at once).
        min_interval: seconds between redraws at least (the last one is always drawn):
            BC trains hundreds of blocks a second and a terminal shows a few frames.
    """

    BAR_FORMAT = (
        "{desc}: {percentage:3.0f}%|{bar}| {counts} {unit} "
        "[{elapsed}<{remaining}, {speed}{postfix}]"
    )

    def __init__(
        self, refresh_rate: int = 1, process_position: int = 0, min_interval: float = 0.1
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.min_interval = float(min_interval)
        self._last_draw = 0.0
        self._drawn: tuple[int, str] | None = None
        self._redirect: _WritesAboveBar | None = None

    def init_train_tqdm(self) -> Tqdm:
        """The training bar of a module without a budget (Lightning's, on stderr)."""
        return Tqdm(
            desc=self.train_description,
            bar_format=TQDMProgressBar.BAR_FORMAT,
            **self._bar_options(),
        )

    def _bar_options(self) -> dict:
        """What both kinds of training bar share: stderr, one line, no smoothing."""
        return {
            "position": 2 * self.process_position,
            "disable": self.is_disabled,
            "leave": True,
            "dynamic_ncols": True,
            "file": sys.stderr,
            "smoothing": 0,
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "training_budget"):
            super().on_train_start(trainer, pl_module)
        else:
            # The data is loaded by now, so budgets counted in it (BC's epochs) are known;
            # a resumed module has its checkpoint's count.
            budget = pl_module.training_budget()
            self.train_progress_bar = _BudgetTqdm(
                desc=type(pl_module).__name__,
                total=budget.total,
                initial=budget.done,
                unit=budget.unit,
                bar_format=self.BAR_FORMAT,
                **self._bar_options(),
            )
            self._drawn = (budget.done, "")
            self._last_draw = time.monotonic()
        if not self.train_progress_bar.disable:
            self._redirect = _WritesAboveBar(self.train_progress_bar.fp)
            self._redirect.start()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # One epoch is the whole budget (see tdimitation.budget): the bar is set up above.
        if not hasattr(pl_module, "training_budget"):
            super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not hasattr(pl_module, "training_budget"):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if bar.disable or (batch_idx + 1) % self.refresh_rate:
            return
        done = pl_module.training_budget().done
        if time.monotonic() - self._last_draw >= self.min_interval or done == bar.total:
            self._draw(trainer, pl_module, done)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "training_budget"):
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self._draw(trainer, pl_module, pl_module.training_budget().done)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, done: int) -> None:
        figures = self._figures(trainer, pl_module)
        if self._drawn == (done, figures):
            return
        bar = self.train_progress_bar
        bar.n = done
        bar.set_postfix_str(figures, refresh=False)
        bar.refresh()
        self._drawn = (done, figures)
        self._last_draw = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._stop_redirect()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        self._stop_redirect()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_redirect()

    def _stop_redirect(self) -> None:
        if self._redirect is not None:
            self._redirect.stop()
            self._redirect = None

    def _figures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """``label=value`` of the module's ``progress_figures`` logged so far."""
        figures = getattr(pl_module, "progress_figures", None)
        if figures is None:
            return ", ".join(f"{k}={v}" for k, v in self.get_metrics(trainer, pl_module).items())
        metrics = trainer.callback_metrics
        return ", ".join(
            f"{label}={compact_number(metrics[key])}"
            for key, label in figures.items()
            if key in metrics
        )


def _is_lightning_default(bar: ProgressBar) -> bool:
    """Whether ``bar`` is the one a Trainer adds by itself (its class, default settings)."""
    from lightning.pytorch.callbacks import RichProgressBar

    if type(bar) is TQDMProgressBar:
        default = TQDMProgressBar()
        return (bar.refresh_rate, bar.process_position) == (
            default.refresh_rate,
            default.process_position,
        )
    return type(bar) is RichProgressBar and bar.refresh_rate == RichProgressBar().refresh_rate


def default_progress_bar(trainer: L.Trainer) -> BudgetProgressBar | None:
    """Replace the Trainer's default progress bar by a :class:`BudgetProgressBar`.

    Returns the new bar (for ``configure_callbacks`` to add), or None where the Trainer has
    no bar (``enable_progress_bar=False``) or one the user chose (another class, or
    Lightning's with other settings), which is kept.
    """
    current = trainer.progress_bar_callback
    if current is None or not _is_lightning_default(current):
        return None
    trainer.callbacks = [c for c in trainer.callbacks if c is not current]
    return BudgetProgressBar()
