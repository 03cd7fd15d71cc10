"""The exploration wrapper: switch between the agent's and random actions."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Bounded, Categorical

from tdimitation.errors import PreferenceError
from tdimitation.rng import Stochastic, randint, uniform


class ExplorationPolicy(TensorDictModuleBase, Stochastic):
    """The agent's policy, or random actions while :attr:`explore` is on.

    While exploring, every sub-env acts randomly or with the agent; at each step it
    re-chooses with probability ``switch_prob``, picking random actions with probability
    ``random_prob``. Off, it is the agent's policy unchanged (its log-probabilities and
    every other output pass through), so the agent's own rounds collect through it.

    Args:
        policy: the agent's collection policy (not registered as a submodule: the agent
            owns it).
        action_spec: the env's unbatched action spec (categorical or bounded).
        switch_prob: per-step probability of re-choosing.
        random_prob: probability that a (re-)choice is random actions.
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        action_spec,
        switch_prob: float = 0.5,
        random_prob: float = 0.5,
    ) -> None:
        super().__init__()
        for name, p in (("switch_prob", switch_prob), ("random_prob", random_prob)):
            if not 0.0 <= p <= 1.0:
                raise PreferenceError(f"{name} must be in [0, 1], got {p}")
        if not isinstance(action_spec, Categorical | Bounded):
            raise PreferenceError(
                f"exploration needs a categorical or bounded action space, got "
                f"{type(action_spec).__name__}"
            )
        self.__dict__["policy"] = policy
        self.spec = action_spec
        self.switch_prob, self.random_prob = float(switch_prob), float(random_prob)
        self.explore = False
        self._random: torch.Tensor | None = None  # which sub-envs act randomly
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def _random_actions(self, batch: torch.Size) -> torch.Tensor:
        spec = self.spec
        if isinstance(spec, Categorical):
            return randint(spec.space.n, batch + spec.shape, self.rng)
        low, high = spec.space.low, spec.space.high
        u = uniform(batch + spec.shape, self.rng)
        return (low + u * (high - low)).to(spec.dtype)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = self.policy(tensordict)
        if not self.explore:
            return tensordict
        batch = tensordict.batch_size
        if self._random is None or self._random.shape != batch:
            self._random = uniform(batch, self.rng) < self.random_prob
        switch = uniform(batch, self.rng) < self.switch_prob
        self._random = torch.where(
            switch, uniform(batch, self.rng) < self.random_prob, self._random
        )
        agent_action = tensordict.get("action")
        random_action = self._random_actions(batch).to(agent_action)
        mask = self._random.to(agent_action.device)
        mask = mask.reshape(mask.shape + (1,) * (agent_action.ndim - mask.ndim))
        action = torch.where(mask, random_action, agent_action)
        tensordict.set("action", action)
        if "action_sample" in tensordict.keys():
            tensordict.set("action_sample", action.clone())
        return tensordict

    def sampling_state(self) -> dict:
        return {} if self._random is None else {"random": self._random.clone()}

    def set_sampling_state(self, state: dict) -> None:
        self._random = state.get("random")


__all__ = ["ExplorationPolicy"]
