"""Loss modules (torchrl ``LossModule`` style): declared keys, no training loops inside."""

from tdimitation.objectives.adversarial import AIRLDiscriminatorLoss, DiscriminatorLoss
from tdimitation.objectives.bc import BCLoss
from tdimitation.objectives.dqn import QLearningLoss
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.objectives.preference import PreferenceLoss, PreferenceModel
from tdimitation.objectives.sac import (
    DiscreteSoftActorCriticLoss,
    EnsembleMLP,
    SoftActorCriticLoss,
)

__all__ = [
    "AIRLDiscriminatorLoss",
    "BCLoss",
    "DiscreteSoftActorCriticLoss",
    "DiscriminatorLoss",
    "EnsembleMLP",
    "PPOClipLoss",
    "PreferenceLoss",
    "PreferenceModel",
    "QLearningLoss",
    "SoftActorCriticLoss",
]
