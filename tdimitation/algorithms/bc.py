"""Behavioral cloning as a LightningModule, and the demonstrations datamodule."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.utils.data import DataLoader, IterableDataset

from tdimitation.budget import TrainingBudget
from tdimitation.callbacks import FitCallbacks
from tdimitation.data.trajectory import check_matches_env, check_trajectories
from tdimitation.distributed import rank_and_world
from tdimitation.envs import as_env_id, make_env
from tdimitation.errors import BudgetError, TrajectoryError
from tdimitation.fused import FirstMinibatchCheck, FusedOptions, FusedUpdate, fused_update_for
from tdimitation.fused.lightning import module_step_blocker, unwrap_optimizer
from tdimitation.objectives.bc import BCLoss
from tdimitation.policies.actors import build_actor
from tdimitation.policies.adapters import as_actor
from tdimitation.utils import attached_trainer, plain_backward, seeded


class DemonstrationData(L.LightningDataModule):
    """Expert demonstrations held as one in-memory trajectory set.

    Exactly one source: ``path`` (a trajectory dataset or ``imitation`` file),
    ``trajectories`` (an in-memory trajectory set), or ``expert`` (a policy spec such as
    ``"scripted"`` or ``"sb3-ppo:model.zip"``) with ``n_episodes``: collected once with
    deterministic actions and cached as a dataset under ``cache_dir``.

    The module being trained decides how batches are drawn (``make_train_loader``), so
    that the loader can yield index blocks rather than collated rows.

    Args:
        env_id: environment the demonstrations belong to (used to collect and to check).
        path: dataset directory or legacy file.
        trajectories: in-memory trajectory set.
        expert: policy spec for collecting demonstrations.
        n_episodes: episodes to collect from ``expert``.
        seed: seed of the collection env.
        cache_dir: where collected demonstrations are cached (default: data dir/demos).
        env_kwargs: extra ``gymnasium.make`` arguments.
        fixed_horizon: optional fixed episode length of the collection env.
    """

    def __init__(
        self,
        env_id: str,
        path: str | None = None,
        trajectories: TensorDictBase | None = None,
        expert: str | None = None,
        n_episodes: int = 50,
        seed: int = 0,
        cache_dir: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        fixed_horizon: int | None = None,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        super().__init__()
        sources = [s is not None for s in (path, trajectories, expert)]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one source of demonstrations: path, trajectories or expert"
            )
        self.env_id, self.path, self.expert = env_id, path, expert
        self.n_episodes, self.seed = int(n_episodes), seed
        self.cache_dir, self.env_kwargs, self.fixed_horizon = cache_dir, env_kwargs, fixed_horizon
        self.demonstrations: TensorDictBase | None = trajectories
        #: The random policy's and the expert's returns stored with the dataset (None when
        #: it has none): ``tdimitation fit`` records them for normalised scores.
        self.reference_returns: dict[str, float] | None = None

    def _cache_path(self) -> Path:
        from tdimitation.tracking import data_dir

        root = Path(self.cache_dir) if self.cache_dir else data_dir() / "demos"
        name = f"{self.env_id}_{self.expert}_{self.n_episodes}ep_seed{self.seed}"
        if self.env_kwargs or self.fixed_horizon:
            # e.g. LunarLander-v3 with continuous=True is another task under the same id.
            options = json.dumps(
                {"env_kwargs": self.env_kwargs, "fixed_horizon": self.fixed_horizon},
                sort_keys=True,
            )
            name += "_" + hashlib.sha1(options.encode()).hexdigest()[:10]
        return root / name.replace("/", "-").replace(":", "-")

    def prepare_data(self) -> None:
        if self.expert is None or self._cache_path().exists():
            return
        from tdimitation.data.reference import measure_reference_returns
        from tdimitation.data.rollout import rollout
        from tdimitation.data.storage import save_trajectories
        from tdimitation.policies.registry import policy_from_string

        env = make_env(
            self.env_id,
            num_envs=8,
            seed=self.seed,
            env_kwargs=self.env_kwargs,
            fixed_horizon=self.fixed_horizon,
        )
        try:
            expert = policy_from_string(self.expert, env=env)
            # Bars only where someone watches (a terminal), as the fit's own bar.
            watched = sys.stderr.isatty()
            demos = rollout(
                expert,
                env,
                min_episodes=self.n_episodes,
                deterministic=True,
                progress="expert demonstrations" if watched else False,
            )
            references = measure_reference_returns(
                demos, env, self.n_episodes, self.seed, progress=watched
            )
        finally:
            env.close()
        save_trajectories(
            self._cache_path(),
            demos,
            env_id=self.env_id,
            metadata={"expert": self.expert, "seed": self.seed, **references},
        )

    def setup(self, stage: str | None = None) -> None:
        if self.demonstrations is not None:
            return
        from tdimitation.data.reference import reference_returns
        from tdimitation.data.storage import load_trajectories, trajectory_metadata

        source = self.path if self.path is not None else self._cache_path()
        self.demonstrations = load_trajectories(source)
        meta = trajectory_metadata(source)
        self.reference_returns = reference_returns(meta.get("metadata"))

    def train_dataloader(self) -> DataLoader:
        return self.trainer.lightning_module.make_train_loader(self.demonstrations)


#: BC's figures on the progress bar (besides ``bc/epoch``), as ``bc/<key>``.
PROGRESS_BAR_KEYS = ("loss", "prob_true_act")


class _IndexBlocks(IterableDataset):
    """Blocks ``[K, micro_batches, batch]`` of row indices, epoch after epoch.

    Each epoch is a fresh permutation (from a generator seeded by ``seed + epoch``, so a
    resumed run redraws the same order) cut into full batches; ``skip`` batches are dropped
    from the front when resuming. With ``world`` processes, each micro-batch of the run is
    ``world * batch`` rows of that permutation (the batch one process of batch
    ``world * batch`` would draw) and process ``rank`` gets its ``rank``-th slice.
    """

    def __init__(
        self,
        n_rows: int,
        batch: int,
        accumulate: int,
        block: int,
        n_batches: int,
        seed: int,
        skip: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n_rows, self.batch, self.accumulate, self.block = n_rows, batch, accumulate, block
        self.n_batches, self.seed, self.skip = n_batches, seed, skip
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[torch.Tensor]:
        rows_per_step = self.batch * self.accumulate * self.world
        per_epoch = self.n_rows // rows_per_step
        done, epoch, pending = 0, 0, []
        while done < self.n_batches:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n_rows, generator=g)[: per_epoch * rows_per_step]
            steps = perm.view(per_epoch, self.accumulate, self.world, self.batch)[:, :, self.rank]
            for step in steps:
                if done >= self.n_batches:
                    break
                if done >= self.skip:
                    pending.append(step)
                done += 1
                if len(pending) == self.block:
                    yield torch.stack(pending)
                    pending = []
            epoch += 1
        if pending:
            yield torch.stack(pending)


class BC(FitCallbacks, L.LightningModule):
    """Behavioral cloning: maximise the likelihood of the expert's actions.

    Data comes from a :class:`DemonstrationData` passed to ``trainer.fit(model,
    datamodule=...)``. Training is a fixed number of optimizer steps: ``n_epochs`` passes
    over the demonstrations or ``n_batches`` batches (exactly one). Each ``training_step``
    runs ``steps_per_call`` optimizer steps on a block of pre-drawn batches with manual
    optimisation and fused Adam, and logs once: Lightning costs ~0.35 ms per
    ``training_step`` and ~0.3 ms per ``self.log``, more than a whole optimizer step at
    batch 32. The updates are exactly those of one step per batch.
    ``grad_accumulation`` sums gradients over that many micro-batches of ``batch_size``
    before a step, which equals one step on their union (Lightning's own
    ``accumulate_grad_batches`` is not available with manual optimisation).

    **The update.** The autograd loop in :meth:`update_on_block` is the specification: per
    micro-batch the loss module's ``forward`` and ``backward``, then ``optimizer.step()``.
    When :func:`~tdimitation.fused.fused_update_for` finds it exact (exactly ``BCLoss``, a
    ``CategoricalActor`` MLP, float32 on one device, plain Adam, no backward or
    optimizer-step hook), a block runs :class:`~tdimitation.fused.BCFusedUpdate` instead:
    closed-form gradients and Adam's own update called directly, bit for bit the updates of
    the autograd loop's ``optimizer.step()`` up to the gradients' float rounding. At the
    start of every fit its gradients are checked once against autograd's on the first
    minibatch; if they disagree the fit uses autograd (with a
    :class:`~tdimitation.fused.FusedUpdateWarning`). :attr:`update_path` records the path.

    Fused blocks (and, with plain Lightning settings, the autograd loop) step the torch
    optimizer itself: per-optimizer-step hooks do not fire inside them (an overridden
    Lightning backward/optimizer-step hook sends every step through Lightning instead;
    ``torch.optim`` step hooks are skipped by fused blocks), and ``trainer.global_step``
    does not count their steps: :attr:`batches_done` does, logged as
    ``bc/optimizer_steps``. ``fast_updates=False`` routes every step through Lightning.

    **Several processes.** Under Lightning's ``ddp`` strategy each of N processes trains
    on ``batch_size`` rows of every step, its slice of the ``N * batch_size`` rows one
    process would draw (the same seeded permutation), and DDP averages the gradients: the
    updates are those of one process with batch ``N * batch_size`` (up to float rounding).
    An epoch is then ``len(demonstrations) // (N * batch_size * grad_accumulation)``
    steps. DDP's gradient averaging runs in the backward pass, so the autograd loop trains
    (:attr:`update_path` says so).

    Args:
        env_id: environment (for the policy's spaces and evaluation).
        n_epochs: passes over the demonstrations.
        n_batches: optimizer steps (alternative to ``n_epochs``).
        batch_size: rows per micro-batch (per process under ``ddp``).
        grad_accumulation: micro-batches per optimizer step.
        steps_per_call: optimizer steps per ``training_step``.
        learning_rate: Adam learning rate.
        optimizer_kwargs: extra Adam arguments (``weight_decay`` is refused: use
            ``l2_weight``).
        ent_weight: entropy bonus weight.
        l2_weight: L2 penalty weight (½ Σ ||θ||²).
        policy: the policy to train instead of a new MLP actor: a torchrl
            ``ProbabilisticActor`` (wrapped in a
            :class:`~tdimitation.policies.adapters.TorchRLPolicy`; :attr:`policy` is the
            wrapper, ``policy.module`` yours) or any module the loss accepts. Not a
            hyperparameter: pass it again to ``load_from_checkpoint``. ``hidden_sizes``,
            ``activation`` and ``policy_kind`` are then unused, and the checkpoint's
            exported-policy entry is empty (the weights are in its state dict).
        hidden_sizes: policy MLP widths.
        activation: activation name.
        policy_kind: ``"auto"``, ``"categorical"``, ``"gaussian"``, ``"tanh_normal"``.
        eval_every_n_epochs: evaluate the policy every this many epochs (0: never).
        eval_episodes: evaluation episodes (deterministic).
        seed: seed of the initial weights, of the batches and of evaluation envs.
        env_kwargs: extra ``gymnasium.make`` arguments.
        fixed_horizon: optional fixed episode length.
        fast_updates: use the fused update when exact, and step the torch optimizer
            directly when Lightning's wrapper adds nothing (see above; same updates).
            ``False`` routes every step through ``manual_backward`` and Lightning's
            optimizer wrapper, e.g. for callbacks that need per-step hooks.
    """

    #: The progress bar's figures (the expert actions' mean probability: BC's accuracy).
    progress_figures = {"bc/loss": "loss", "bc/prob_true_act": "p(expert)", "bc/epoch": "epoch"}
    multi_process = True

    def __init__(
        self,
        env_id: str,
        n_epochs: int | None = None,
        n_batches: int | None = None,
        batch_size: int = 32,
        grad_accumulation: int = 1,
        steps_per_call: int = 64,
        learning_rate: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        ent_weight: float = 1e-3,
        l2_weight: float = 0.0,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        policy_kind: str = "auto",
        eval_every_n_epochs: int = 0,
        eval_episodes: int = 10,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        fixed_horizon: int | None = None,
        fast_updates: bool = True,
        policy: TensorDictModuleBase | None = None,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        super().__init__()
        if (n_epochs is None) == (n_batches is None):
            raise ValueError(
                "give exactly one of n_epochs and n_batches (both or neither were given)"
            )
        if (n_epochs is not None and n_epochs <= 0) or (n_batches is not None and n_batches <= 0):
            raise BudgetError(f"n_epochs / n_batches must be positive, got {n_epochs or n_batches}")
        if "weight_decay" in (optimizer_kwargs or {}):
            raise ValueError(
                "weight_decay is not supported: Adam couples it to the gradient scale; use "
                "l2_weight, which adds l2_weight * ½ Σ ||θ||² to the loss"
            )
        # Subclasses' constructor frames are collected too; policy objects are not hparams.
        self.save_hyperparameters(ignore=["expert_policy", "policy"])
        self.automatic_optimization = False
        self.env = make_env(env_id, seed=seed, env_kwargs=env_kwargs, fixed_horizon=fixed_horizon)
        # Initial weights from ``seed``, not from the global RNG's state: runs repeat.
        if policy is not None:
            self.policy = as_actor(policy, self.env.full_action_spec_unbatched["action"])
        else:
            with seeded(seed):
                self.policy = build_actor(
                    self.env, kind=policy_kind, hidden_sizes=hidden_sizes, activation=activation
                )
        self.loss_module = BCLoss(self.policy, ent_weight=ent_weight, l2_weight=l2_weight)
        self._fused_check = FirstMinibatchCheck()
        #: Which path the last block took: ``"fused"`` or ``"autograd: <reason>"``.
        self.update_path = ""
        self.batches_done = 0
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._per_epoch = 1

    # ------------------------------------------------------------------- data
    def make_train_loader(self, demonstrations: TensorDictBase) -> DataLoader:
        hp = self.hparams
        check_trajectories(demonstrations, "demonstrations")
        check_matches_env(demonstrations, self.env, "demonstrations")
        n_rows = demonstrations.shape[0]
        rank, world = rank_and_world(self)
        # Under ddp each process takes its share of every step's rows (see _IndexBlocks).
        rows_per_step = hp.batch_size * hp.grad_accumulation * world
        if n_rows < rows_per_step:
            processes = f" over {world} processes" if world > 1 else ""
            raise TrajectoryError(
                f"the demonstrations hold {n_rows} transitions, fewer than one batch "
                f"({rows_per_step}{processes}); collect more or lower batch_size"
            )
        self._per_epoch = n_rows // rows_per_step
        total = hp.n_batches if hp.n_batches is not None else hp.n_epochs * self._per_epoch
        # Leaves as plain tensors on the module's device (indexing a TensorDict per step
        # costs ~0.1 ms), under the loss's keys (set_keys).
        keys = self.loss_module.tensor_keys
        self._data = (
            demonstrations[keys.observation].to(self.device),
            demonstrations[keys.action].to(self.device),
        )
        blocks = _IndexBlocks(
            n_rows,
            hp.batch_size,
            hp.grad_accumulation,
            hp.steps_per_call,
            total,
            hp.seed,
            skip=self.batches_done,
            rank=rank,
            world=world,
        )
        return DataLoader(blocks, batch_size=None, num_workers=0)

    # --------------------------------------------------------------- training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        kwargs = dict(self.hparams.optimizer_kwargs or {})
        kwargs.setdefault("fused", True)
        return torch.optim.Adam(self.policy.parameters(), lr=self.hparams.learning_rate, **kwargs)

    def update_on_block(
        self,
        observations: torch.Tensor,
        actions: torch.Tensor,
        block: torch.Tensor,
        diagnostics: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One optimizer step per batch of ``block`` (``[K, micro_batches, batch]`` rows).

        Returns the loss metrics of the last micro-batch of the last step, or ``{}`` when
        ``diagnostics`` is False. The steps are the autograd loop below (the
        specification) or, when :func:`~tdimitation.fused.fused_update_for` finds it exact
        and it passed this fit's first-minibatch check, the fused update (see the class
        docstring); :attr:`update_path` records which and why.
        """
        block = block.to(observations.device)
        steps, accumulate, batch = block.shape
        rows = block.reshape(steps * accumulate, batch)
        # One gather per block; unbind gives each micro-batch as a view without indexing ops.
        obs_batches = observations[rows].unbind(0)
        act_batches = actions[rows].unbind(0)
        keys = self.loss_module.tensor_keys

        def minibatch(i: int) -> TensorDict:
            return TensorDict(
                {keys.observation: obs_batches[i], keys.action: act_batches[i]},
                batch_size=[batch],
            )

        last = steps * accumulate - 1 if diagnostics else -1
        fused = self._fused_update(lambda: minibatch(0))
        if not isinstance(fused, str):
            self.update_path = "fused"
            return fused.run_block(obs_batches, act_batches, steps, accumulate, last)
        self.update_path = f"autograd: {fused}"
        # The specification: the loss module's forward on each micro-batch, backward, step.
        optimizer, backward = self._optimizer_and_backward()
        scale = 1.0 / accumulate
        for k in range(steps):
            optimizer.zero_grad(set_to_none=True)
            for m in range(accumulate):
                out = self.loss_module(minibatch(k * accumulate + m))
                backward(out["loss"] * scale if accumulate > 1 else out["loss"])
            optimizer.step()
        return {k: v.detach() for k, v in out.items()} if diagnostics else {}

    def _fused_update(self, first_minibatch: Callable[[], TensorDict]) -> FusedUpdate | str:
        """The fused update for this block, or why the autograd loop runs instead."""
        if not self.hparams.get("fast_updates", True):
            return "fast_updates=False"
        optimizer = self.optimizers()
        options = FusedOptions(backward=self.manual_backward)
        update = fused_update_for(self.loss_module, optimizer, options)
        return self._fused_check(update, optimizer, first_minibatch)

    def _optimizer_and_backward(self) -> tuple[Any, Callable[[torch.Tensor], None]]:
        """The autograd loop's optimizer and backward: torch's own where Lightning's
        ``manual_backward`` and optimizer wrapper would only add a step counter (plain
        32-bit precision on one device, no hook overridden; ~0.2 ms less per step), else
        Lightning's (``fast_updates=False`` always takes Lightning's).
        """
        optimizer = self.optimizers()
        if self.hparams.get("fast_updates", True) and module_step_blocker(self) is None:
            return unwrap_optimizer(optimizer), plain_backward
        return optimizer, self.manual_backward

    def _logger_will_record(self) -> bool:
        """Whether the Trainer sends this batch's step metrics to its loggers.

        Lightning writes step metrics every ``log_every_n_steps`` batches only, and one
        ``self.log`` call costs as much as a few optimizer steps at batch 32, so the loss
        metrics are computed and logged on those batches only (``trainer.callback_metrics``
        holds the last logged values in between).
        """
        trainer = attached_trainer(self)
        if trainer is None or trainer.fast_dev_run:
            return True
        # Lightning writes when the count of training batches so far, this one included, is
        # a multiple of log_every_n_steps; each batch here is a block of steps_per_call.
        blocks = self.batches_done // self.hparams.steps_per_call + 1
        return blocks % max(trainer.log_every_n_steps, 1) == 0

    def training_step(self, block: torch.Tensor, batch_idx: int) -> None:
        log_metrics = self._logger_will_record()
        out = self.update_on_block(*self._data, block, diagnostics=log_metrics)
        epochs_before = self.batches_done // self._per_epoch
        self.batches_done += block.shape[0]
        if log_metrics:
            # The run's optimizer steps (fused blocks' included: Lightning counts only its own).
            out = out | {"optimizer_steps": torch.tensor(float(self.batches_done))}
            for on_bar in (True, False):  # the loss and the expert actions' probability shown
                self.log_dict(
                    {
                        f"bc/{key}": value.detach()
                        for key, value in out.items()
                        if (key in PROGRESS_BAR_KEYS) == on_bar
                    },
                    prog_bar=on_bar,
                    on_step=True,
                    on_epoch=False,
                    batch_size=1,
                )
        self.log("bc/epoch", self.batches_done / self._per_epoch, prog_bar=True, batch_size=1)
        every = self.hparams.eval_every_n_epochs
        if every and (self.batches_done // self._per_epoch) // every > epochs_before // every:
            # Every process holds the same policy: the first one evaluates it for all.
            if self.trainer.is_global_zero:
                evaluation = {f"eval/{k}": v for k, v in self.evaluate().items()}
                self.log_dict(evaluation, prog_bar=False, batch_size=1, rank_zero_only=True)

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        """Deterministic evaluation of the current policy (return and length statistics)."""
        from tdimitation.evaluation import evaluate_module

        return evaluate_module(self, episodes or self.hparams.eval_episodes)

    # ------------------------------------------------------------ interfaces
    def training_budget(self, checkpoint: dict[str, Any] | None = None) -> TrainingBudget:
        """``n_batches``, or ``n_epochs`` (in batches once the demonstrations are loaded)."""
        hp = self.hparams
        done = self.batches_done
        if checkpoint is not None:
            done = int(checkpoint["tdimitation"]["batches_done"])
        if hp.n_batches is not None:
            return TrainingBudget("n_batches", hp.n_batches, "batches", done, hp.n_batches)
        total = hp.n_epochs * self._per_epoch if self._data is not None else None
        return TrainingBudget("n_epochs", hp.n_epochs, "batches", done, total)

    def export_policy(self):
        return self.policy

    def make_env(self, num_envs: int | None = None, seed: int | None = None):
        hp = self.hparams
        return make_env(
            hp.env_id,
            num_envs=num_envs or 1,
            seed=hp.seed if seed is None else seed,
            env_kwargs=hp.env_kwargs,
            fixed_horizon=hp.fixed_horizon,
        )

    @property
    def seed(self) -> int:
        return self.hparams.seed

    @property
    def env_id(self) -> str:
        return self.hparams.env_id

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from tdimitation.policies.registry import checkpoint_policy_entry

        policy, not_saved = checkpoint_policy_entry(self.policy)
        checkpoint["tdimitation"] = {"batches_done": self.batches_done, "policy": policy}
        if not_saved is not None:
            checkpoint["tdimitation"]["policy_not_saved"] = not_saved

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_done = int(checkpoint["tdimitation"]["batches_done"])
