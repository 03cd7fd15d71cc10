"""One budget per run: the algorithm's own (frames, batches, rounds, iterations).

Every algorithm trains for the budget its constructor sets: ``total_frames`` (online
algorithms: PPO, SAC, DQN, GAIL, AIRL, SQIL, Density, preference comparisons with an
agent), ``n_epochs`` or ``n_batches`` (BC), ``n_rounds`` (DAgger), ``num_iterations``
(preference comparisons on a fixed dataset), ``max_iter`` (MCE IRL). Its dataloader yields
exactly the part of that budget not yet done, so a fit is one Lightning epoch, and a
resumed fit is the rest of the interrupted one.

The Trainer's own limits count other things (epochs of that dataloader, Lightning
optimizer steps, which the fused updates do not take) and would repeat or cut the budget
silently, so :class:`BudgetGuard` (added by every algorithm, see
:class:`~tdimitation.callbacks.FitCallbacks`) refuses the ones that conflict with it and
maps ``max_epochs`` onto it:

* ``max_epochs``: unset (Lightning's default), ``-1`` or ``1`` (or, resuming, the
  checkpoint's finished epochs + 1, as Lightning counts): the fit ends when the budget is
  used up, whatever epoch a resumed checkpoint stopped in. Anything else is refused.
* ``max_steps``, ``min_steps``, ``min_epochs`` above 1, ``limit_train_batches`` other than
  ``1.0`` (and so ``fast_dev_run``): refused.
* ``max_time`` is a wall-clock cap, not a budget: the run stops early with its checkpoint,
  and ``--ckpt_path`` resumes the rest.
* A fit with nothing left (a finished run's checkpoint) is refused, naming the argument to
  raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L

from tdimitation.errors import BudgetError

#: ``trainer.max_epochs`` values that leave the budget to the algorithm: unset (Lightning
#: turns None into 1000 when neither max_steps nor max_time is set), unlimited, one pass.
NEUTRAL_MAX_EPOCHS = (None, -1, 1, 1000)


@dataclass(frozen=True)
class TrainingBudget:
    """An algorithm's budget and how much of it is done.

    Attributes:
        argument: the constructor argument that sets it (``"total_frames"``).
        value: that argument's value.
        unit: what ``done`` and ``total`` count (``"frames"``, ``"batches"``, ...).
        done: units done so far (restored from a checkpoint when resuming).
        total: units in all; None until the training data is loaded (BC's ``n_epochs``).
        step: units one training step uses (an online round's frames); fewer left than
            this means nothing is left.
    """

    argument: str
    value: int
    unit: str
    done: int
    total: int | None
    step: int = 1

    @property
    def used_up(self) -> bool:
        return self.total is not None and self.total - self.done < self.step


def check_trainer_limits(
    trainer: L.Trainer, module: Any, epochs_done: int | None = None, max_epochs: Any = ...
) -> None:
    """Refuse Trainer limits that would repeat or cut ``module``'s own budget.

    Args:
        trainer: the Trainer about to fit.
        module: an algorithm (with ``training_budget()``).
        epochs_done: epochs finished before this fit (a resumed checkpoint's); None when
            not known yet, which accepts any positive ``max_epochs`` for now.
        max_epochs: the value to check (default: the Trainer's).

    Raises:
        BudgetError: naming the Trainer setting and the algorithm's budget argument.
    """
    budget = module.training_budget()
    name = type(module).__name__
    own = (
        f"{name}'s budget is {budget.argument}={budget.value} "
        f"(--model.init_args.{budget.argument} on the command line)"
    )
    if max_epochs is ...:
        max_epochs = trainer.max_epochs
    # Lightning counts max_epochs from the first run: a resume after one finished epoch
    # may say 2 (that epoch plus the one that runs the rest of the budget).
    consistent = max_epochs in NEUTRAL_MAX_EPOCHS or (
        max_epochs > 0 if epochs_done is None else max_epochs == epochs_done + 1
    )
    if not consistent:
        effect = "train nothing" if max_epochs == 0 else "repeat or cut the run"
        raise BudgetError(
            f"trainer max_epochs={max_epochs} would {effect}: {own}; a fit is one pass "
            "through it, so change that and leave max_epochs unset (or 1, or -1)"
        )
    limits = {
        "max_steps": (trainer.max_steps, lambda v: v is None or v == -1),
        "min_steps": (trainer.min_steps, lambda v: v is None or v <= 0),
        "min_epochs": (trainer.min_epochs, lambda v: v is None or v <= 1),
        "limit_train_batches": (
            trainer.limit_train_batches,
            lambda v: isinstance(v, float) and v == 1.0,
        ),
    }
    for setting, (value, neutral) in limits.items():
        if not neutral(value):
            raise BudgetError(
                f"trainer {setting}={value} is not a budget here: {own}; change that and "
                f"leave {setting} unset (max_time may cap the wall-clock time)"
            )


def check_budget_left(module: Any, checkpoint: dict[str, Any] | None = None) -> None:
    """Refuse a fit with nothing left to train (e.g. resuming a finished run).

    With ``checkpoint`` (a resume's, not loaded yet), what is done is read from it.
    """
    budget = module.training_budget(checkpoint)
    if budget.used_up:
        raise BudgetError(
            f"{type(module).__name__} has nothing left to train: {budget.done} of "
            f"{budget.total} {budget.unit} done ({budget.argument}={budget.value}); raise "
            f"{budget.argument} to continue this checkpoint, or start a new run without it"
        )


class BudgetGuard(L.Callback):
    """Make the algorithm's budget the only one (see the module docstring).

    At the start of a fit it refuses conflicting Trainer limits and a used-up budget and
    lifts ``max_epochs``; once the loops are restored from a checkpoint it sets
    ``max_epochs`` to end after the current epoch, the one that runs the rest of the budget.
    """

    def __init__(self) -> None:
        self._max_epochs: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The loops (their epoch count) are restored from a checkpoint after this hook.
        resuming = trainer.ckpt_path is not None
        check_trainer_limits(trainer, pl_module, None if resuming else trainer.current_epoch)
        check_budget_left(pl_module)
        self._max_epochs = trainer.max_epochs
        # No limit until the epoch count is known.
        trainer.fit_loop.max_epochs = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_trainer_limits(trainer, pl_module, trainer.current_epoch, self._max_epochs)
        # The data is loaded now, so budgets counted in it (BC's epochs) are known.
        check_budget_left(pl_module)
        trainer.fit_loop.max_epochs = trainer.current_epoch + 1
