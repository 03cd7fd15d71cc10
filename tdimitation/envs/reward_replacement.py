"""``RewardReplacement``: train a policy on a learned reward inside a torchrl env.

Adversarial and preference-based algorithms train their generator on a learned reward.
Replacing the reward inside the environment (a torchrl transform) keeps every
collector, RL loss and metric unchanged: they read ``("next", "reward")`` as usual.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.data import Composite
from torchrl.envs.transforms import Transform


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


class RewardReplacement(Transform):
    """Replace the env's reward by a reward module's output; keep the original.

    At each step the env's reward moves to ``original_key`` (default
    ``("next", "original_reward")``) and the module's output, computed without gradients
    on the transition (``observation``, ``action``, ``("next", "observation")``,
    ``("next", "done")``, ...), becomes ``("next", "reward")``. The env's own episode
    statistics (``("next", "episode_reward")`` of :class:`~tdimitation.envs.GymVecEnv`)
    stay the true return; this transform adds ``("next", "episode_learned_reward")``, the
    learned return of the current episode of each sub-env (zeroed at episode starts).

    Both new keys are declared in the observation spec (as torchrl's ``RewardSum`` does),
    so they are also carried to the root of the following step, and ``check_env_specs``
    passes. Applied to a TED batch outside an env (``transform(batch)``, or as a replay
    buffer transform), it relabels the batch's rewards the same way; an existing
    ``original_key`` entry is kept, so relabelling twice never loses the true reward.

    The module runs in whatever mode it is in: a
    :class:`~tdimitation.rewards.RewardNet` in training mode updates its normalisation
    statistics on the rollouts (call ``eval()`` on it to freeze them).

    Args:
        reward_module: a TensorDict module reading TED keys and writing a reward, e.g. any
            :class:`~tdimitation.rewards.RewardNet` (which writes ``"learned_reward"``).
        original_key: where the env's reward is kept; must be under ``"next"``.
        reward_key: the module's output key holding the reward (default: its first
            ``out_keys`` entry).
    """

    def __init__(
        self,
        reward_module: TensorDictModuleBase,
        original_key: NestedKey = ("next", "original_reward"),
        reward_key: NestedKey | None = None,
    ) -> None:
        original_key = unravel_key(original_key)
        if not isinstance(original_key, tuple) or original_key[0] != "next":
            raise ValueError(
                f"original_key must be under 'next' (the step's output), e.g. "
                f"('next', 'original_reward'); got {original_key!r}"
            )
        if reward_key is None:
            out_keys = list(getattr(reward_module, "out_keys", []) or [])
            if not out_keys:
                raise ValueError(
                    f"cannot tell which key of {type(reward_module).__name__} holds the "
                    "reward: it has no out_keys; pass reward_key="
                )
            reward_key = out_keys[0]
        self._original = unravel_key(original_key[1:])
        self._episode_key = "episode_learned_reward"
        super().__init__(in_keys=[], out_keys=[self._original, self._episode_key])
        # Held outside nn.Module's registry: the reward net belongs to the training
        # algorithm, so env.to(device) and the env's state_dict must not take it over.
        self.__dict__["_reward_module"] = reward_module
        self.reward_key = unravel_key(reward_key)
        self._learned_return: torch.Tensor | None = None

    @property
    def reward_module(self) -> TensorDictModuleBase:
        """The module computing the learned reward."""
        return self.__dict__["_reward_module"]

    # ------------------------------------------------------------ computing
    def _env_reward_key(self) -> NestedKey:
        parent = self.parent
        return parent.reward_key if parent is not None else "reward"

    def _learned(self, ted: TensorDictBase, like: torch.Tensor) -> torch.Tensor:
        """Run the reward module on a TED TensorDict; return the reward shaped like ``like``."""
        module = self.reward_module
        device = _module_device(module)
        # Compare with a tensor's device: a TensorDict's device is None unless set, and
        # moving a TensorDict costs as much as the reward net itself.
        if device is not None and like.device != device:
            ted = ted.to(device)
        with torch.no_grad():
            out = module(ted)
        reward = out.get(self.reward_key)
        return reward.reshape(like.shape).to(dtype=like.dtype, device=like.device)

    def _ted_view(self, root: TensorDictBase, next_td: TensorDictBase) -> TensorDictBase:
        """A new TensorDict with the root entries the module reads and ``next_td`` as next.

        Writing the module's output into it leaves the env's TensorDicts untouched.
        """
        ted = TensorDict({"next": next_td}, batch_size=next_td.batch_size, device=next_td.device)
        in_keys = getattr(self.reward_module, "in_keys", None)
        root_keys = (
            [k for k in in_keys if not (isinstance(k, tuple) and k[0] == "next")]
            if in_keys is not None
            else [k for k in root.keys() if k != "next"]
        )
        for key in root_keys:
            ted.set(key, root.get(key))
        return ted

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        env_key = self._env_reward_key()
        original = next_tensordict.get(env_key)
        learned = self._learned(self._ted_view(tensordict, next_tensordict), original)
        if isinstance(self.reward_key, tuple) and self.reward_key[0] == "next":
            # The module wrote into the step's output: drop it, the spec does not list it.
            next_tensordict.pop(self.reward_key[1:], None)
        next_tensordict.set(self._original, original)
        next_tensordict.set(env_key, learned)
        previous = self._learned_return
        if previous is None or previous.shape != learned.shape:
            previous = torch.zeros_like(learned)
        # A new tensor each step: the stored outputs of earlier steps must not change.
        self._learned_return = previous + learned
        next_tensordict.set(self._episode_key, self._learned_return)
        return next_tensordict

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        spec = self.parent.full_reward_spec[self._env_reward_key()]
        zeros = spec.zero().to(tensordict_reset.device)
        reset = tensordict.get("_reset", None) if tensordict is not None else None
        previous = self._learned_return
        if reset is None or previous is None or previous.shape != zeros.shape:
            self._learned_return = zeros
        else:
            mask = reset.reshape(zeros.shape[: reset.dim()] + (1,) * (zeros.dim() - reset.dim()))
            self._learned_return = torch.where(mask.to(zeros.device), zeros, previous)
        tensordict_reset.set(self._episode_key, self._learned_return)
        tensordict_reset.set(self._original, zeros.clone())
        return tensordict_reset

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Relabel a TED batch (any batch shape) with the learned reward, in place."""
        env_key = self._env_reward_key()
        next_td = tensordict.get("next")
        original = next_td.get(self._original, None)
        if original is None:
            original = next_td.get(env_key)
            next_td.set(self._original, original)
        learned = self._learned(self._ted_view(tensordict, next_td), original)
        if isinstance(self.reward_key, tuple) and self.reward_key[0] == "next":
            next_td.pop(self.reward_key[1:], None)
        next_td.set(env_key, learned)
        return tensordict

    # ---------------------------------------------------------------- specs
    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        reward_spec = self.parent.full_reward_spec[self._env_reward_key()]
        observation_spec[self._original] = reward_spec.clone()
        observation_spec[self._episode_key] = reward_spec.clone()
        return observation_spec

    def __repr__(self) -> str:
        return (
            f"RewardReplacement(reward_module={type(self.reward_module).__name__}, "
            f"original_key={('next', self._original)!r})"
        )


__all__ = ["RewardReplacement"]
