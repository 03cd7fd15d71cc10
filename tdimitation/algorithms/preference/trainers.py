"""Reward trainers: fit the preference model to the preference dataset.

:class:`BasicRewardTrainer` runs epochs of shuffled batches (``batch_size`` pairs per
optimizer step, accumulated over minibatches of ``minibatch_size`` when memory is short).
:class:`EnsembleRewardTrainer` trains every member of a reward ensemble on its own
bootstrap resample of the dataset (bagging), so members disagree where data is scarce:
what active selection measures. Both draw every permutation and resample from the run's
generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase

from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.algorithms.preference.regularizers import Regularizer
from tdimitation.errors import PreferenceError
from tdimitation.objectives.preference import PreferenceLoss
from tdimitation.rewards import evaluating
from tdimitation.rng import randint, randperm


class BasicRewardTrainer:
    """Train a (non-ensemble, or whole-ensemble) preference model by cross-entropy.

    Args:
        loss: the :class:`~tdimitation.objectives.PreferenceLoss` (holds the model).
        rng: the run's generator.
        batch_size: pairs per optimizer step.
        minibatch_size: pairs per forward/backward (must divide ``batch_size``; None:
            ``batch_size``).
        epochs: epochs per :meth:`train` call (times ``epoch_multiplier``).
        lr: Adam learning rate.
        regularizer: an optional :class:`Regularizer` (bound here to the model).
        backward: how to backpropagate (a LightningModule's ``manual_backward``).
    """

    def __init__(
        self,
        loss: PreferenceLoss,
        rng: torch.Generator | None,
        batch_size: int = 32,
        minibatch_size: int | None = None,
        epochs: int = 1,
        lr: float = 1e-3,
        regularizer: Regularizer | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        minibatch_size = minibatch_size or batch_size
        if batch_size < 1 or minibatch_size < 1 or epochs < 1 or lr <= 0:
            raise PreferenceError(
                "batch_size, minibatch_size and epochs must be >= 1 and lr > 0, got "
                f"{batch_size}, {minibatch_size}, {epochs}, {lr}"
            )
        if batch_size % minibatch_size:
            raise PreferenceError(
                f"minibatch_size ({minibatch_size}) must divide batch_size ({batch_size})"
            )
        self.loss = loss
        self.model = loss.preference_model
        self.rng = rng
        self.batch_size, self.minibatch_size = int(batch_size), int(minibatch_size)
        self.epochs, self.lr = int(epochs), float(lr)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.regularizer = regularizer
        if regularizer is not None:
            regularizer.bind(self.model.parameters(), self.optimizer)
        self.backward = backward or (lambda loss: loss.backward())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------- splitting
    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Train and validation indices (a validation set only for a λ updater)."""
        reg = self.regularizer
        if reg is None or reg.val_split is None:
            return torch.arange(n), None
        n_val = max(1, int(n * reg.val_split))
        if n - n_val < 1:
            raise PreferenceError(
                f"{n} preferences are too few for val_split={reg.val_split}: nothing would "
                "be left to train on"
            )
        perm = randperm(n, self.rng)
        return perm[n_val:], perm[:n_val]

    def _members_indices(self, train: torch.Tensor) -> list[torch.Tensor]:
        """The training rows of each member (one list entry: the whole model)."""
        return [train]

    def _member(self, i: int) -> int | None:
        return None

    @property
    def _count(self) -> int:
        """Losses per step: 1, or one per ensemble member."""
        return 1

    # -------------------------------------------------------------- training
    def _step(self, pairs: TensorDictBase, labels: torch.Tensor, rows: list[torch.Tensor]):
        """One optimizer step on ``rows[m]`` for every member ``m``; summed metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        n_batch = rows[0].numel()
        for start in range(0, n_batch, self.minibatch_size):
            total = 0.0
            for m, member_rows in enumerate(rows):
                mb = member_rows[start : start + self.minibatch_size]
                out = self.loss(pairs[mb], labels[mb], member=self._member(m))
                total = total + out["loss"] * (mb.numel() / n_batch)
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value.detach() * mb.numel()
            if self.regularizer is not None:
                penalty = self.regularizer.penalty()
                if penalty is not None:
                    total = total + penalty * (min(self.minibatch_size, n_batch) / n_batch)
            self.backward(total)
        if self.regularizer is not None:
            self.regularizer.after_backward()
        self.optimizer.step()
        return sums

    @torch.no_grad()
    def evaluate(self, pairs: TensorDictBase, labels: torch.Tensor) -> dict[str, float]:
        """Loss and metrics of the whole model on ``pairs`` (evaluation mode, no grad)."""
        with evaluating(self.model.reward_net):
            outs = [self.loss(pairs, labels, member=self._member(m)) for m in range(self._count)]
        return {k: float(sum(float(o[k]) for o in outs) / len(outs)) for k in outs[0].keys()}

    def train(self, dataset: PreferenceDataset, epoch_multiplier: float = 1.0) -> dict[str, float]:
        """Train on the whole dataset; returns the last epoch's mean training metrics."""
        n = len(dataset)
        if n == 0:
            raise PreferenceError("cannot train the reward model on an empty preference dataset")
        device = self.device
        pairs, labels = dataset.pairs().to(device), dataset.labels().to(device)
        train, val = self._split(n)
        members = self._members_indices(train)
        epochs = max(1, int(self.epochs * epoch_multiplier))
        metrics: dict[str, float] = {}
        self.model.train()
        for _ in range(epochs):
            perms = [rows[randperm(rows.numel(), self.rng)] for rows in members]
            sums: dict[str, float] = {}
            for start in range(0, perms[0].numel(), self.batch_size):
                batch = [p[start : start + self.batch_size].to(device) for p in perms]
                for key, value in self._step(pairs, labels, batch).items():
                    sums[key] = sums.get(key, 0.0) + value
            count = sum(p.numel() for p in perms)
            metrics = {f"train/{k}": float(v) / count for k, v in sums.items()}
            if val is not None:
                val_metrics = self.evaluate(pairs[val.to(device)], labels[val.to(device)])
                train_loss = self.evaluate(pairs[train.to(device)], labels[train.to(device)])
                self.regularizer.update_params(train_loss["loss"], val_metrics["loss"])
                metrics |= {f"val/{k}": v for k, v in val_metrics.items()}
        if self.regularizer is not None:
            metrics["regularizer_lambda"] = self.regularizer.lambda_
        metrics["epochs"] = float(epochs)
        return metrics

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Optimizer and regulariser state."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.regularizer is not None and state.get("regularizer") is not None:
            self.regularizer.load_state_dict(state["regularizer"])


class EnsembleRewardTrainer(BasicRewardTrainer):
    """Each ensemble member trains on its own bootstrap resample (bagging).

    The resamples are drawn once per :meth:`train` call from the run's generator: member
    ``m`` sees ``n`` rows drawn with replacement from the ``n`` training pairs. Members share
    one Adam optimizer (its state is per parameter, so this equals one optimizer each).
    Arguments as :class:`BasicRewardTrainer`.
    """

    def __init__(self, loss: PreferenceLoss, *args, **kwargs) -> None:
        if loss.preference_model.ensemble is None:
            raise PreferenceError(
                "EnsembleRewardTrainer needs a preference model over a RewardEnsemble; use "
                "BasicRewardTrainer for a single reward net"
            )
        super().__init__(loss, *args, **kwargs)

    def _members_indices(self, train: torch.Tensor) -> list[torch.Tensor]:
        n = train.numel()
        return [train[randint(n, (n,), self.rng)] for _ in range(self.model.num_members)]

    def _member(self, i: int) -> int | None:
        return i

    @property
    def _count(self) -> int:
        return self.model.num_members


__all__ = ["BasicRewardTrainer", "EnsembleRewardTrainer"]
