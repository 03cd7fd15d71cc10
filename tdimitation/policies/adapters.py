"""Adapters giving torchrl's own modules the methods tdimitation's losses call.

The losses read actors and critics through the Protocols of
:mod:`tdimitation.objectives.protocols` (``log_prob``, ``evaluate_actions``, ``sample``,
``logits``, ``value``, ``q_values``, ...). tdimitation's MLP actors and critics have those
methods; torchrl's modules compute the same things through TensorDicts and distributions.
The adapters here bridge the two, without copying any parameter (the wrapped module is a
submodule: optimizers, ``state_dict`` and ``.to(device)`` see its parameters):

* :class:`TorchRLPolicy` wraps a ``ProbabilisticActor`` (any module with ``get_dist``):
  ``Categorical``/``OneHotCategorical`` for discrete actions, ``Normal``/``TanhNormal``
  (with ``NormalParamExtractor``) and other distributions for continuous ones. It is also a
  TensorDict policy: collectors and evaluation call it, and it writes ``action`` as the env
  expects (indices, not one-hot rows) and ``action_log_prob``.
* :class:`TorchRLValue` wraps a ``ValueOperator`` (``V(s)``, PPO's critic).
* :class:`TorchRLQValues` wraps a Q-network over discrete actions (DQN).
* :class:`TorchRLCriticEnsemble` holds SAC's twin critics built from ``ValueOperator`` modules.

The losses adapt what they are given (:func:`as_actor`, :func:`as_value_critic`,
:func:`as_q_network`, :func:`as_critic_ensemble`); users rarely build adapters themselves.
Sampling in torchrl modules draws from torch's global RNG, which a training run seeds
when it starts and stores in its checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import distributions as D
from torch import nn
from torchrl.data import Bounded, Composite, MultiCategorical, TensorSpec
from torchrl.data import Categorical as CategoricalSpec
from torchrl.modules import OneHotCategorical as TorchRLOneHotCategorical

from tdimitation.errors import PolicyError
from tdimitation.policies.actors import write_epsilon_greedy
from tdimitation.rng import Stochastic

__all__ = [
    "TorchRLCriticEnsemble",
    "TorchRLPolicy",
    "TorchRLQValues",
    "TorchRLValue",
    "EpsilonGreedyQPolicy",
    "as_actor",
    "as_critic_ensemble",
    "as_q_network",
    "as_value_critic",
]

_ONE_HOT = (D.OneHotCategorical, TorchRLOneHotCategorical)
OBSERVATION = "observation"
ACTION = "action"
LOG_PROB = "action_log_prob"


def _single_in_key(module: TensorDictModuleBase, what: str) -> object:
    in_keys = list(getattr(module, "in_keys", []))
    if len(in_keys) != 1:
        raise PolicyError(
            f"{what} {type(module).__name__} reads {in_keys}; an adapted torchrl module must "
            "read one observation key (tdimitation's data holds 'observation')"
        )
    return in_keys[0]


def _action_spec(module: nn.Module, action_spec: TensorSpec | None) -> TensorSpec | None:
    """The unbatched action spec given, or the one a torchrl actor carries (``spec``)."""
    if action_spec is not None:
        if isinstance(action_spec, Composite):
            return action_spec.get(ACTION, None)
        return action_spec
    spec = getattr(module, "spec", None)
    if isinstance(spec, Composite):
        spec = spec.get(ACTION, None)
    return spec if isinstance(spec, TensorSpec) else None


class TorchRLPolicy(TensorDictModuleBase):
    """A torchrl ``ProbabilisticActor`` with the methods tdimitation's losses call.

    Satisfies :class:`~tdimitation.objectives.protocols.ActionEvaluator`,
    :class:`~tdimitation.objectives.protocols.ReparameterizedActor` (distributions with
    ``rsample``) and :class:`~tdimitation.objectives.protocols.CategoricalPolicy`
    (categorical distributions). ``forward`` runs the wrapped actor (so its exploration
    type, ``set_exploration_type``, applies), converts one-hot actions to indices and adds
    ``action_log_prob`` when the actor does not write it.

    Entropies come from the distribution; distributions without a closed form (e.g.
    ``TanhNormal``) return minus the log-probability of one sampled action, an unbiased
    estimate. Observations are not normalised (``obs_norm`` is None).

    Args:
        actor: the torchrl actor (anything with ``get_dist(tensordict)``), reading one
            observation key.
        action_spec: the env's (unbatched) action spec; default: the actor's ``spec``.
            Bounded specs give ``action_scale``/``action_bias`` (tdimitation's SAC critics
            read actions rescaled to [-1, 1]); discrete ones give ``n_actions``.
    """

    def __init__(self, actor: TensorDictModuleBase, action_spec: TensorSpec | None = None) -> None:
        super().__init__()
        if not callable(getattr(actor, "get_dist", None)):
            raise PolicyError(
                f"{type(actor).__name__} has no get_dist(tensordict): wrap a torchrl "
                "ProbabilisticActor (or another module building a distribution)"
            )
        self.module = actor
        self.observation_key = _single_in_key(actor, "actor")
        self.obs_norm = None
        self.in_keys = [OBSERVATION]
        self.out_keys = [ACTION, LOG_PROB]
        spec = _action_spec(actor, action_spec)
        # Declared outputs, not the keys present after a call: a collector's reused
        # TensorDict may still hold the previous step's log-probabilities.
        self._writes_log_prob = LOG_PROB in list(getattr(actor, "out_keys", []))
        # Whether the actor writes one-hot rows (None: unknown until the first call).
        self._one_hot_actions: bool | None = None
        for sub in actor.modules():
            cls = getattr(sub, "distribution_class", None)
            if isinstance(cls, type):
                self._one_hot_actions = issubclass(cls, _ONE_HOT)
        self.n_actions: int | None = None
        self.action_dim: int | None = None
        if isinstance(spec, CategoricalSpec) and not isinstance(spec, MultiCategorical):
            self.n_actions = int(spec.space.n)
        elif spec is not None and spec.dtype.is_floating_point:
            self.action_dim = int(spec.shape.numel())
            if isinstance(spec, Bounded):
                low = spec.space.low.reshape(-1).to(torch.float32)
                high = spec.space.high.reshape(-1).to(torch.float32)
                self.register_buffer("action_scale", (high - low) / 2)
                self.register_buffer("action_bias", (high + low) / 2)

    # ------------------------------------------------------------ distributions
    def distribution(self, observation: torch.Tensor) -> D.Distribution:
        """The actor's action distribution at ``observation`` (a batch ``[B, *obs_shape]``)."""
        # An empty batch size accepts any leading dims: the modules work on the tensors.
        return self.module.get_dist(TensorDict({self.observation_key: observation}, []))

    @staticmethod
    def _one_hot(dist: D.Distribution) -> bool:
        return isinstance(dist, _ONE_HOT)

    @staticmethod
    def _per_sample(value: torch.Tensor, dims: int) -> torch.Tensor:
        """Sum per-dimension terms (a plain ``Normal``'s) into one value per sample."""
        while value.dim() > dims:
            value = value.sum(-1)
        return value

    def _log_prob(self, dist: D.Distribution, action: torch.Tensor) -> torch.Tensor:
        """One log-probability per sample: ``action``'s shape without its event dims."""
        if isinstance(dist, D.Categorical | D.OneHotCategorical):
            if action.dim() == dist.logits.dim() - 1:  # indices
                if self._one_hot(dist):
                    n = dist.logits.shape[-1]
                    return dist.log_prob(F.one_hot(action.long(), n).to(dist.logits.dtype))
                return dist.log_prob(action.long())
            return dist.log_prob(action)  # one-hot rows
        return self._per_sample(dist.log_prob(action), action.dim() - 1)

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log pi(action | observation)`` ``[B]`` (int64 indices for discrete actions)."""
        return self._log_prob(self.distribution(observation), action)

    def evaluate_actions(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``action`` and the entropy (or its one-sample estimate)."""
        dist = self.distribution(observation)
        log_prob = self._log_prob(dist, action)
        try:
            entropy = self._per_sample(dist.entropy(), log_prob.dim())
        except NotImplementedError:
            sample = dist.rsample() if dist.has_rsample else dist.sample()
            entropy = -self._log_prob(dist, sample)
        return log_prob, entropy.expand_as(log_prob)

    def sample(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability (SAC's actor loss)."""
        dist = self.distribution(observation)
        if not dist.has_rsample:
            raise PolicyError(
                f"{type(dist).__name__} has no reparameterised samples (rsample): continuous "
                "SAC needs one, e.g. TanhNormal"
            )
        action = dist.rsample()
        return action, self._log_prob(dist, action)

    def logits(self, observation: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_actions]`` of a categorical actor."""
        dist = self.distribution(observation)
        if not isinstance(dist, D.Categorical | D.OneHotCategorical):
            raise PolicyError(
                f"{type(dist).__name__} is not a categorical distribution: discrete losses "
                "need Categorical or OneHotCategorical actors"
            )
        return dist.logits

    def features(self, observation: torch.Tensor) -> torch.Tensor:
        """The observation itself (torchrl actors do not normalise inside the policy)."""
        return observation

    # ------------------------------------------------------------------ acting
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        key = self.observation_key
        renamed = key != OBSERVATION
        if renamed:
            tensordict.set(key, tensordict.get(OBSERVATION))
        tensordict = self.module(tensordict)
        if self._one_hot_actions is None:
            observation = tensordict.get(OBSERVATION)
            with torch.no_grad():
                self._one_hot_actions = self._one_hot(self.distribution(observation))
        if self._one_hot_actions:  # one-hot rows: the env's Discrete spec takes indices
            tensordict.set(ACTION, tensordict.get(ACTION).argmax(-1))
        if not self._writes_log_prob:
            with torch.no_grad():
                flat = tensordict.reshape(-1)
                log_prob = self.log_prob(flat.get(OBSERVATION), flat.get(ACTION))
            tensordict.set(LOG_PROB, log_prob.reshape(tensordict.batch_size))
        return tensordict


class TorchRLValue(TensorDictModuleBase):
    """A torchrl ``ValueOperator`` (``V(s)``) as a :class:`StateValueCritic`.

    Args:
        critic: the value module, reading one observation key and writing its value
            (``out_keys[0]``, ``"state_value"`` for a ``ValueOperator``).
    """

    def __init__(self, critic: TensorDictModuleBase) -> None:
        super().__init__()
        self.module = critic
        self.observation_key = _single_in_key(critic, "critic")
        self.value_key = list(critic.out_keys)[0]
        self.obs_norm = None
        self.in_keys = [OBSERVATION]
        self.out_keys = ["state_value"]

    def value(self, observation: torch.Tensor) -> torch.Tensor:
        """State values ``[..., 1]``."""
        out = self.module(TensorDict({self.observation_key: observation}, []))
        value = out.get(self.value_key)
        return value if value.shape[-1:] == (1,) else value.unsqueeze(-1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("state_value", self.value(tensordict.get(OBSERVATION)))
        return tensordict


class TorchRLQValues(TensorDictModuleBase):
    """A torchrl Q-network over discrete actions as an :class:`ActionValueNetwork`.

    It acts greedily (``action`` = argmax index, ``action_value``, ``chosen_action_value``);
    exploration is the training algorithm's business.

    Args:
        network: a module reading one observation key and writing ``Q(s, .)`` as its
            first out key (a ``ValueOperator`` with ``out_keys=["action_value"]``, or a
            torchrl ``QValueActor``, whose ``action_value`` is read).
    """

    def __init__(self, network: TensorDictModuleBase) -> None:
        super().__init__()
        self.module = network
        self.observation_key = _single_in_key(network, "Q-network")
        out_keys = list(network.out_keys)
        self.value_key = "action_value" if "action_value" in out_keys else out_keys[0]
        self.obs_norm = None
        self.in_keys = [OBSERVATION]
        self.out_keys = [ACTION, "action_value", "chosen_action_value"]

    def features(self, observation: torch.Tensor) -> torch.Tensor:
        return observation

    def q_values(self, observation: torch.Tensor) -> torch.Tensor:
        """``Q(s, .)`` ``[B, n_actions]``."""
        return self.module(TensorDict({self.observation_key: observation}, [])).get(self.value_key)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        q = self.q_values(tensordict.get(OBSERVATION))
        action = q.argmax(-1)
        tensordict.set(ACTION, action)
        tensordict.set("action_value", q)
        tensordict.set("chosen_action_value", q.gather(-1, action.unsqueeze(-1)).squeeze(-1))
        return tensordict


def _reset_parameters(module: nn.Module) -> None:
    for sub in module.modules():
        if sub is not module and callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()


class TorchRLCriticEnsemble(nn.Module):
    """SAC's critics from torchrl ``ValueOperator`` modules, as a :class:`CriticEnsemble`.

    For continuous actions each critic reads the observation and the action (in the env's
    units, as torchrl's ``SACLoss``) and writes ``Q(s, a)``; for discrete actions it reads
    the observation and writes ``Q(s, .)``. One critic given is copied (``num_critics``
    members, each copy re-initialised with its layers' ``reset_parameters``).

    Args:
        critics: one critic module or a sequence of them.
        num_critics: ensemble size when a single critic is given.
    """

    def __init__(
        self,
        critics: TensorDictModuleBase | Sequence[TensorDictModuleBase],
        num_critics: int = 2,
    ) -> None:
        super().__init__()
        if isinstance(critics, nn.Module):
            members = [critics]
            for _ in range(int(num_critics) - 1):
                member = copy.deepcopy(critics)
                _reset_parameters(member)
                members.append(member)
        else:
            members = list(critics)
        if not members:
            raise PolicyError("a critic ensemble needs at least one critic")
        self.members = nn.ModuleList(members)
        self.n = len(members)
        self.value_keys = [list(m.out_keys)[0] for m in members]

    def _evaluate(self, inputs: dict, detach_params: bool) -> torch.Tensor:
        values = []
        for member, key in zip(self.members, self.value_keys, strict=True):
            td = TensorDict({k: v for k, v in inputs.items() if k in member.in_keys}, [])
            if detach_params:
                params = {name: p.detach() for name, p in member.named_parameters()}
                out = torch.func.functional_call(member, params, (td,))
            else:
                out = member(td)
            values.append(out.get(key))
        return torch.stack(values)

    def state_action_values(
        self, observation: torch.Tensor, action: torch.Tensor, detach_params: bool = False
    ) -> torch.Tensor:
        """``Q_i(s, a)`` of every member, ``[n, B]``."""
        values = self._evaluate({OBSERVATION: observation, ACTION: action}, detach_params)
        return values.squeeze(-1) if values.dim() > 2 else values

    def action_values(self, observation: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """``Q_i(s, .)`` of every member, ``[n, B, n_actions]``."""
        return self._evaluate({OBSERVATION: observation}, detach_params)


# ------------------------------------------------------------------ adaptation
def _is_torchrl_actor(module: object) -> bool:
    # torchrl's actors build distributions (get_dist) but score actions only through
    # TensorDicts (their log_prob takes one); the Protocol's evaluate_actions is missing.
    return callable(getattr(module, "get_dist", None)) and not callable(
        getattr(module, "evaluate_actions", None)
    )


def as_actor(actor: nn.Module, action_spec: TensorSpec | None = None) -> nn.Module:
    """``actor`` itself if it already has the losses' methods, else its adapter.

    tdimitation's actors and :class:`TorchRLPolicy` are returned unchanged; a torchrl
    ``ProbabilisticActor`` (a module with ``get_dist`` and no ``evaluate_actions``) is
    wrapped in a :class:`TorchRLPolicy`. Anything else (e.g. a deterministic
    ``TensorDictModule``) is returned unchanged for the loss to handle or refuse.
    """
    if isinstance(actor, TensorDictModuleBase) and _is_torchrl_actor(actor):
        return TorchRLPolicy(actor, action_spec)
    return actor


def as_value_critic(critic: nn.Module) -> nn.Module:
    """``critic`` if it has ``value(observation)``, else a :class:`TorchRLValue` around it."""
    if callable(getattr(critic, "value", None)):
        return critic
    if isinstance(critic, TensorDictModuleBase):
        return TorchRLValue(critic)
    raise PolicyError(
        f"{type(critic).__name__} is not a value critic: pass a torchrl ValueOperator or a "
        "module with value(observation)"
    )


def as_q_network(network: nn.Module) -> nn.Module:
    """``network`` if it has ``q_values(observation)``, else a :class:`TorchRLQValues`."""
    if callable(getattr(network, "q_values", None)):
        return network
    if isinstance(network, TensorDictModuleBase):
        return TorchRLQValues(network)
    raise PolicyError(
        f"{type(network).__name__} is not a Q-network: pass a torchrl module writing "
        "action_value, or a module with q_values(observation)"
    )


class EpsilonGreedyQPolicy(TensorDictModuleBase, Stochastic):
    """A user's Q-network as DQN's collection policy: greedy, epsilon-greedy while exploring.

    The counterpart of :class:`~tdimitation.policies.actors.QValueActor` for networks built
    elsewhere: ``q_network`` is read through ``q_values(observation)`` (a torchrl module
    writing ``action_value`` is wrapped in a :class:`TorchRLQValues`). ``epsilon`` is a
    buffer the training algorithm anneals; random actions draw from the run's generator.

    Args:
        q_network: the Q-network over discrete actions.
        epsilon: initial exploration rate.
    """

    def __init__(self, q_network: nn.Module, epsilon: float = 0.0) -> None:
        super().__init__()
        self.q_network = as_q_network(q_network)
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))
        self.obs_norm = getattr(self.q_network, "obs_norm", None)
        self.in_keys = [OBSERVATION]
        self.out_keys = [ACTION, "action_value", "chosen_action_value"]

    def q_values(self, observation: torch.Tensor) -> torch.Tensor:
        """``Q(s, .)`` ``[B, n_actions]``."""
        return self.q_network.q_values(observation)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        q = self.q_values(tensordict.get(OBSERVATION))
        return write_epsilon_greedy(tensordict, q, self.epsilon, self.rng)


def as_critic_ensemble(critics: nn.Module | Sequence[nn.Module], num_critics: int = 2):
    """SAC's critics: an ensemble with the protocol's methods, adapted when needed.

    Anything with ``state_action_values``/``action_values`` is returned unchanged; one
    torchrl module or a sequence of them becomes a :class:`TorchRLCriticEnsemble`. (The SAC
    losses keep tdimitation's :class:`~tdimitation.objectives.EnsembleMLP` as it is.)
    """
    if isinstance(critics, nn.Module) and (
        callable(getattr(critics, "state_action_values", None))
        or callable(getattr(critics, "action_values", None))
    ):
        return critics
    if isinstance(critics, TensorDictModuleBase) or (
        isinstance(critics, Sequence)
        and critics
        and all(isinstance(c, TensorDictModuleBase) for c in critics)
    ):
        return TorchRLCriticEnsemble(critics, num_critics)
    raise PolicyError(
        f"cannot use {type(critics).__name__} as SAC's critics: pass an EnsembleMLP, a torchrl "
        "ValueOperator (or a list of them) or a module with state_action_values/action_values"
    )
