"""Adversarial imitation: GAIL and AIRL as LightningModules.

One round, in the order of the AIRL paper:

1. collect a generator batch with the current policy (``frames_per_batch`` frames);
2. add it to the generator replay buffer and run ``n_disc_updates_per_round``
   discriminator steps, each on ``demo_batch_size`` demonstrations against as many
   generator transitions drawn from that buffer;
3. update the generator (any :mod:`tdimitation.rl` algorithm with an ``update`` method)
   on the batch relabelled with the freshly trained discriminator's reward.

The generator is a component built from ``generator`` (``"ppo"`` or ``"sac"``) and
``generator_kwargs``; it shares the env settings of this module. Demonstrations come from
the constructor (a trajectory set or a dataset path) or from a
:class:`~tdimitation.algorithms.DemonstrationData` datamodule (recipes use this).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader

from tdimitation.data.trajectory import (
    check_matches_env,
    check_one_horizon,
    check_trajectories,
    episode_lengths,
)
from tdimitation.envs import as_env_id
from tdimitation.errors import TrajectoryError
from tdimitation.nn import RunningNorm, discounted_returns, scale_by_return_std
from tdimitation.objectives.adversarial import AIRLDiscriminatorLoss, DiscriminatorLoss
from tdimitation.objectives.bc import BCLoss
from tdimitation.rewards import (
    CHECKPOINT_REWARD_KEY,
    MLPRewardNet,
    RewardNet,
    ShapedRewardNet,
    reward_payload,
)
from tdimitation.rl.base import OnlineAlgorithm, without_modules
from tdimitation.rl.ppo import PPO
from tdimitation.rl.sac import SAC
from tdimitation.rng import randint, randperm
from tdimitation.utils import check_positive, seeded

#: Generator algorithms by name. GAIL and AIRL both accept on- and off-policy generators.
GENERATORS: dict[str, type[OnlineAlgorithm]] = {"ppo": PPO, "sac": SAC}

#: The keys a demonstration or generator transition needs.
_DISCRIMINATOR_KEYS = ("observation", "action", ("next", "observation"), ("next", "done"))


class AdversarialImitation(OnlineAlgorithm):
    """Shared machinery of GAIL and AIRL (see the module docs for the round).

    Subclasses build the reward network (:meth:`build_reward_net`) and the discriminator
    loss (:meth:`build_discriminator_loss`).

    Args:
        env_id: environment id (fixed-horizon ids such as ``tdimitation/CartPoleFixed-v1``
            are the intended use; see ``allow_variable_horizon``).
        demonstrations: expert transitions: a trajectory set or the path of a trajectory
            dataset (or ``imitation`` file). Leave None when a
            :class:`~tdimitation.algorithms.DemonstrationData` datamodule provides them.
        generator: ``"ppo"`` or ``"sac"``.
        generator_kwargs: constructor arguments of the generator (its env settings,
            budget and seed are this module's). They may hold networks, e.g. torchrl modules
            as PPO's ``actor``/``critic`` or SAC's ``actor``/``qvalue``; those are kept out
            of the hyperparameters, so pass them again to ``load_from_checkpoint``.
        num_envs: sub-envs stepped together.
        total_frames: budget of generator environment frames.
        seed: seed of envs, networks and RNGs.
        fixed_horizon: optional fixed episode length (for ids without one).
        env_kwargs: extra ``gymnasium.make`` arguments.
        demo_batch_size: demonstrations (and generator transitions) per discriminator step.
        n_disc_updates_per_round: discriminator steps per round.
        disc_lr: Adam learning rate of the discriminator.
        gen_replay_buffer_capacity: generator transitions the discriminator samples from
            (None: one round's worth).
        reward_kwargs: arguments of the reward network builder (hidden sizes, which
            inputs it reads, input normalisation, ...).
        normalize_reward: how the generator's reward is normalised (only the RL signal; the
            discriminator trains on raw logits): ``True``/``"step"`` standardises each
            step's reward by running mean and std; ``"return"`` divides it by the running
            std of the discounted return (SB3's ``VecNormalize``; keeps value targets small
            with long horizons and γ near 1); ``False`` leaves it raw.
        gradient_penalty: weight of the discriminator's gradient penalty (0: none).
        generator_reward: what the generator is rewarded with; None for the algorithm's
            default (GAIL: ``"softplus"`` = ``-log(1 - D)``, or ``"logit"`` =
            ``log D - log(1 - D)``; AIRL: ``"f"``, the shaped reward net, or ``"logit"`` =
            ``f - log pi``, which adds the policy's entropy to the objective).
        bc_warmstart_epochs: epochs of behavioral cloning of the generator's policy on the
            demonstrations before the first rollout (0: none). A policy that normalises
            its observations starts its statistics from the demonstrations'.
        debug_true_reward: train the generator on the env's reward (the discriminator
            still trains and is logged): tells a weak generator from a weak discriminator.
        allow_variable_horizon: accept episodes of different lengths. Off by default:
            with variable horizons the learned reward's sign alone can teach "end the
            episode early" or "survive", regardless of the demonstrations.
    """

    progress_bar_keys = ("episode/learned_return",)
    progress_figures = {
        "episode/learned_return": "learned return",
        "episode/return": "true return",
        "train/disc/accuracy": "disc acc",
    }

    def __init__(
        self,
        env_id: str,
        demonstrations: TensorDictBase | str | None = None,
        generator: str = "ppo",
        generator_kwargs: dict[str, Any] | None = None,
        num_envs: int = 8,
        total_frames: int = 300_000,
        seed: int | None = 0,
        fixed_horizon: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        demo_batch_size: int = 1024,
        n_disc_updates_per_round: int = 8,
        disc_lr: float = 1e-3,
        gen_replay_buffer_capacity: int | None = None,
        reward_kwargs: dict[str, Any] | None = None,
        normalize_reward: bool | str = True,
        gradient_penalty: float = 0.0,
        generator_reward: str | None = None,
        bc_warmstart_epochs: int = 0,
        debug_true_reward: bool = False,
        allow_variable_horizon: bool = False,
    ) -> None:
        # A user's env class or factory is kept as its "module:Name" entry point, so
        # hyperparameters stay strings and checkpoints load with weights_only=True.
        env_id = as_env_id(env_id)
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; choose one of {sorted(GENERATORS)}")
        gen = build_component(
            GENERATORS[generator],
            "generator_kwargs",
            generator_kwargs,
            env_id=env_id,
            num_envs=num_envs,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        super().__init__(
            env_id,
            num_envs=num_envs,
            frames_per_batch=gen.frames_per_batch,
            total_frames=total_frames,
            seed=seed,
            fixed_horizon=fixed_horizon,
            env_kwargs=env_kwargs,
        )
        check_positive(
            demo_batch_size=demo_batch_size,
            n_disc_updates_per_round=n_disc_updates_per_round,
            disc_lr=disc_lr,
        )
        if bc_warmstart_epochs < 0:
            raise ValueError(f"bc_warmstart_epochs must be >= 0, got {bc_warmstart_epochs}")
        self.save_hyperparameters(ignore=["demonstrations"])
        # Networks given to the generator (its actor, critic) are not hyperparameters.
        self.hparams["generator_kwargs"] = without_modules(generator_kwargs)
        gen.env.close()  # the generator collects through this module's env
        self.generator = gen
        with seeded(None if seed is None else seed + 1):
            self.reward_net = self.build_reward_net(dict(reward_kwargs or {}))
        self.disc_loss = self.build_discriminator_loss()
        if normalize_reward not in (True, False, None, "step", "return"):
            raise ValueError(
                f"normalize_reward must be True/'step', 'return' or False, got {normalize_reward!r}"
            )
        self.reward_scaling = "step" if normalize_reward is True else (normalize_reward or None)
        self.reward_norm = RunningNorm((), clip=10.0) if self.reward_scaling else None
        # Running discounted return of each sub-env, for normalize_reward="return".
        self.register_buffer("_return_carry", torch.zeros(self.num_envs), persistent=True)
        self.gen_buffer = self.make_transition_buffer(
            gen_replay_buffer_capacity or self.frames_per_batch
        )
        self.demonstrations: TensorDictBase | None = None
        self._demo_source = demonstrations
        self._horizon: int | None = None
        # Learned-reward sums of each sub-env's unfinished episode (for the learned return).
        self.register_buffer("_learned_carry", torch.zeros(self.num_envs), persistent=True)
        self._warm_started = False

    # --------------------------------------------------------------- building
    def build_reward_net(self, reward_kwargs: dict[str, Any]) -> RewardNet:
        """The discriminator's reward network."""
        raise NotImplementedError

    def build_discriminator_loss(self) -> DiscriminatorLoss:
        """The discriminator loss on :attr:`reward_net`."""
        raise NotImplementedError

    def collection_policy(self):
        return self.generator.collection_policy()

    def export_policy(self):
        return self.generator.export_policy()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        gen_optimizer = self.generator.configure_optimizers()
        disc_optimizer = torch.optim.Adam(
            self.reward_net.parameters(), lr=self.hparams.disc_lr, fused=True
        )
        return [gen_optimizer, disc_optimizer]

    def replay_buffers(self) -> dict:
        return {"generator": self.gen_buffer, **self.generator.replay_buffers()}

    # ---------------------------------------------------------- demonstrations
    def set_demonstrations(self, demonstrations: TensorDictBase | str) -> None:
        """Check the expert transitions against the env and keep them on this device."""
        if isinstance(demonstrations, str):
            from tdimitation.data.storage import load_trajectories

            demonstrations = load_trajectories(demonstrations)
        check_trajectories(demonstrations, "demonstrations")
        check_matches_env(demonstrations, self.env, "demonstrations")
        if demonstrations.numel() < self.hparams.demo_batch_size:
            raise TrajectoryError(
                f"demonstrations hold {demonstrations.numel()} transitions, fewer than "
                f"demo_batch_size ({self.hparams.demo_batch_size}): collect more episodes "
                "or lower demo_batch_size"
            )
        if not self.hparams.allow_variable_horizon:
            self._check_horizon(episode_lengths(demonstrations), "the demonstrations")
        self.demonstrations = demonstrations.select(*_DISCRIMINATOR_KEYS).to(self.device)

    def make_train_loader(self, demonstrations: TensorDictBase) -> DataLoader:
        """Hook of :class:`~tdimitation.algorithms.DemonstrationData`: take its data."""
        self.set_demonstrations(demonstrations)
        return self.train_dataloader()

    def train_dataloader(self) -> DataLoader:
        # Called after make_train_loader when a datamodule supplies the demonstrations.
        if self.demonstrations is None and self._demo_source is not None:
            self.set_demonstrations(self._demo_source)
        if self.demonstrations is None:
            raise TrajectoryError(
                f"{type(self).__name__} has no demonstrations: pass demonstrations= (a "
                "trajectory set or dataset path) or a DemonstrationData datamodule"
            )
        return super().train_dataloader()

    def _check_horizon(self, lengths: torch.Tensor, where: str) -> None:
        self._horizon = check_one_horizon(
            lengths,
            self._horizon,
            where,
            (
                f"{type(self).__name__}'s learned reward can then teach ending episodes early or "
                "late regardless of the demonstrations"
            ),
        )

    # --------------------------------------------------------------- training
    def generator_reward(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The reward ``[*B, 1]`` the generator trains on (normalised if configured)."""
        return self._scale_reward(self.disc_loss.generator_reward(tensordict))

    def _scale_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """The configured normalisation of raw generator rewards."""
        if self.reward_scaling == "step":
            reward = self.reward_norm(reward)
        elif self.reward_scaling == "return":
            reward = scale_by_return_std(reward, self.reward_norm)
        return reward

    @torch.no_grad()
    def _update_reward_statistics(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """Fold a round's raw generator rewards ``[N, T]`` into the normaliser."""
        if self.reward_scaling == "step":
            self.reward_norm.update(reward)
            return
        # "return": statistics of the discounted return each step closes (VecNormalize).
        gamma = float(getattr(self.generator, "hparams", {}).get("gamma", 0.99))
        returns, carry = discounted_returns(reward, done, self._return_carry, gamma)
        self._return_carry.copy_(carry)
        self.reward_norm.update(returns)

    def training_step(self, round_index: int, batch_idx: int) -> None:
        # The warm start comes before the first collection, so the first round's rollouts
        # (and the log-probs PPO's ratios start from) are the cloned policy's.
        if not self._warm_started:
            self._warm_started = True
            if self.hparams.bc_warmstart_epochs and self.frames == 0:
                self.behavioral_cloning(self.hparams.bc_warmstart_epochs)
        super().training_step(round_index, batch_idx)

    def training_round(self, batch: TensorDictBase) -> None:
        hp = self.hparams
        gen_optimizer, disc_optimizer = self.optimizers()
        if not hp.allow_variable_horizon:
            done = batch.get(("next", "done"))[..., 0]
            lengths = batch.get(("next", "step_count"))[..., 0][done]
            self._check_horizon(lengths, "the generator's rollouts")

        start = time.perf_counter()
        self.store_transitions(self.gen_buffer, batch)
        metrics = self.train_discriminator(disc_optimizer)
        disc_seconds = time.perf_counter() - start

        start = time.perf_counter()
        with torch.no_grad():
            raw_reward = self.disc_loss.generator_reward(batch)
        if self.reward_norm is not None:
            self._update_reward_statistics(raw_reward[..., 0], batch.get(("next", "done"))[..., 0])

        def reward_fn(tensordict: TensorDictBase) -> torch.Tensor:
            # The round itself was just scored above: reuse it (PPO relabels exactly it).
            if tensordict is batch:
                return self._scale_reward(raw_reward)
            return self.generator_reward(tensordict)

        if hp.debug_true_reward:
            reward_fn = None
        self.generator.sync_frames(self.frames)
        generator_metrics = self.generator.update(
            batch, gen_optimizer, self.manual_backward, reward_fn
        )
        metrics |= {f"gen/{k}": v for k, v in generator_metrics.items()}
        metrics["time/disc_s"] = disc_seconds
        metrics["time/gen_update_s"] = time.perf_counter() - start  # relabelling included
        metrics |= self._learned_return(raw_reward[..., 0], batch.get(("next", "done"))[..., 0])
        metrics["learned_reward_mean"] = float(raw_reward.mean())
        self.log_round(batch, metrics)
        self.generator.sync_frames(self.frames)

    def train_discriminator(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """``n_disc_updates_per_round`` discriminator steps; mean metrics over them."""
        hp = self.hparams
        n_demos = self.demonstrations.numel()
        outs = []
        for _ in range(hp.n_disc_updates_per_round):
            index = randint(n_demos, (hp.demo_batch_size,), self.rng, self.device)
            expert = self.demonstrations[index]
            generator = self.gen_buffer.sample(hp.demo_batch_size).to(self.device)
            out = self.disc_loss(expert, generator)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(out["loss"])
            optimizer.step()
            outs.append(out.detach())
        means = {k: float(torch.stack([o[k] for o in outs]).float().mean()) for k in outs[0].keys()}
        return {f"disc/{k}": v for k, v in means.items() if k != "loss"}

    def _learned_return(self, reward: torch.Tensor, done: torch.Tensor) -> dict[str, float]:
        """Learned-reward returns of the episodes finished in this ``[N, T]`` batch."""
        returns, self._learned_carry = finished_episode_sums(
            reward.float(), done, self._learned_carry.to(reward.device)
        )
        if returns.numel() == 0:
            return {}
        return {"episode/learned_return": float(returns.mean())}

    def behavioral_cloning(self, epochs: int, batch_size: int = 64, lr: float = 1e-3) -> None:
        """Warm-start the generator's policy by behavioral cloning on the demonstrations.

        A policy that normalises its observations first folds the demonstrations into its
        statistics: cloned under the untouched (identity) statistics, it would see its
        inputs rescaled as soon as the first round's observations are folded in.
        """
        obs_norm = getattr(self.generator.actor, "obs_norm", None)
        if obs_norm is not None:
            obs_norm.update(self.demonstrations["observation"])
        actor = self.generator.export_policy()
        loss_module = BCLoss(actor, ent_weight=1e-3)
        optimizer = torch.optim.Adam(actor.parameters(), lr=lr)
        n = self.demonstrations.numel()
        for _ in range(epochs):
            perm = randperm(n, self.rng, self.device)
            for start in range(0, n - batch_size + 1, batch_size):
                rows = self.demonstrations[perm[start : start + batch_size]]
                loss = loss_module(rows)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["tdimitation"]
        state["adversarial"] = {"horizon": self._horizon, "warm_started": self._warm_started}
        # So load_reward(kind, "last.ckpt") works, as load_policy does for the policy.
        state[CHECKPOINT_REWARD_KEY] = reward_payload(self.reward_net)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["tdimitation"].get("adversarial", {})
        self._horizon = state.get("horizon")
        self._warm_started = bool(state.get("warm_started", False))
        self.generator.sync_frames(self.frames)


class GAIL(AdversarialImitation):
    """Generative adversarial imitation learning (Ho & Ermon 2016).

    The discriminator is an MLP reward network on (observation, action) by default
    (``reward_kwargs`` of :class:`~tdimitation.rewards.MLPRewardNet`, 32-32 with input
    normalisation); the generator is rewarded with ``softplus(logit)``. See
    :class:`AdversarialImitation` for the arguments.
    """

    def build_reward_net(self, reward_kwargs: dict[str, Any]) -> RewardNet:
        options = {"normalize_input": True} | reward_kwargs
        return MLPRewardNet.from_env(self.env, **options)

    def build_discriminator_loss(self) -> DiscriminatorLoss:
        return DiscriminatorLoss(
            self.reward_net,
            gradient_penalty=self.hparams.gradient_penalty,
            generator_reward_type=self.hparams.generator_reward or "softplus",
        )


class AIRL(AdversarialImitation):
    """Adversarial inverse reinforcement learning (Fu et al. 2018).

    The reward network is a :class:`~tdimitation.rewards.ShapedRewardNet`: an MLP base
    ``g(s, a)`` plus potential shaping ``gamma * Phi(s') * (1 - done) - Phi(s)``, with
    ``gamma`` the generator's discount unless ``reward_kwargs`` sets ``discount``. The
    discriminator's logit is ``f - log pi(a|s)`` (so the generator must give
    log-probabilities: PPO's or SAC's actor); the generator is rewarded with ``f``.
    :meth:`learned_reward` is the unshaped base ``g``, the reward to reuse at test time.
    See :class:`AdversarialImitation` for the arguments.
    """

    def build_reward_net(self, reward_kwargs: dict[str, Any]) -> RewardNet:
        options = {"normalize_input": True} | reward_kwargs
        discount = options.pop("discount", getattr(self.generator, "hparams", {}).get("gamma"))
        return ShapedRewardNet.from_env(self.env, discount=discount or 0.99, **options)

    def build_discriminator_loss(self) -> DiscriminatorLoss:
        return AIRLDiscriminatorLoss(
            self.reward_net,
            self.generator.export_policy(),
            gradient_penalty=self.hparams.gradient_penalty,
            generator_reward_type=self.hparams.generator_reward or "f",
        )

    def learned_reward(self) -> RewardNet:
        """The unshaped reward network (AIRL's test-time reward)."""
        return self.reward_net.base


def build_generator(cls: type[OnlineAlgorithm], **kwargs: Any) -> OnlineAlgorithm:
    """Build the generator so that it records exactly its own hyperparameters.

    Under LightningCLI, every ``save_hyperparameters()`` call in the CLI's context records
    the arguments the CLI instantiated the outer module with, and ``save_hyperparameters``
    otherwise collects the arguments of every enclosing ``__init__`` frame (this plain
    function's frame ends that walk). The generator's ``hparams`` are therefore set to its
    own bound arguments once it is built.
    """
    generator = cls(**kwargs)
    bound = inspect.signature(cls).bind(**kwargs)
    bound.apply_defaults()
    generator.hparams.clear()
    generator.hparams.update(without_modules(bound.arguments))
    return generator


def build_component(
    cls: type[OnlineAlgorithm],
    argument: str,
    component_kwargs: dict[str, Any] | None,
    **shared: Any,
) -> OnlineAlgorithm:
    """An rl algorithm driven by another (a generator, an agent) sharing its env settings.

    Args:
        cls: the rl algorithm's class.
        argument: the driver's argument holding ``component_kwargs`` (for the message).
        component_kwargs: the component's own constructor arguments.
        **shared: the env settings, budget and seed the driver shares with it.

    Raises:
        ValueError: ``component_kwargs`` sets one of the shared arguments.
    """
    component_kwargs = dict(component_kwargs or {})
    clash = set(shared) & set(component_kwargs)
    if clash:
        raise ValueError(
            f"{argument} may not set {sorted(clash)}: they are this module's own arguments "
            "and the driven algorithm shares them"
        )
    return build_generator(cls, **shared, **component_kwargs)


def finished_episode_sums(
    reward: torch.Tensor, done: torch.Tensor, carry: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of ``reward`` over the episodes that end in a ``[N, T]`` batch.

    ``carry[i]`` is the sum already accumulated by sub-env ``i``'s unfinished episode.
    Returns the finished episodes' sums (row-major order) and the new carry. Vectorised:
    an episode ending at ``t`` sums ``C[t + 1] - C[s]`` with ``C`` the row's cumulative sum
    and ``s`` its start (the step after the previous done, or the batch start plus carry).
    """
    n, t = reward.shape
    cumulative = torch.cat([reward.new_zeros(n, 1), reward.cumsum(1)], dim=1)  # [N, T+1]
    starts = torch.ones_like(done)
    starts[:, 1:] = done[:, :-1]
    start_value = cumulative[:, :t].clone()
    start_value[:, 0] -= carry  # an episode running since an earlier batch
    steps = torch.arange(t, device=reward.device).expand(n, t)
    last_start = torch.where(starts, steps, torch.zeros_like(steps)).cummax(1).values
    sums = cumulative[:, 1:] - start_value.gather(1, last_start)
    new_carry = torch.where(done[:, -1], torch.zeros_like(carry), sums[:, -1])
    return sums[done], new_carry
