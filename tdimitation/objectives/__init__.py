"""Loss modules (torchrl ``LossModule`` style): declared keys, no training loops inside."""

from tdimitation.objectives.adversarial import AIRLDiscriminatorLoss, DiscriminatorLoss
from tdimitation.objectives.bc import BCLoss
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.objectives.preference import PreferenceLoss, PreferenceModel

__all__ = [
    "AIRLDiscriminatorLoss",
    "BCLoss",
    "DiscriminatorLoss",
    "PPOClipLoss",
    "PreferenceLoss",
    "PreferenceModel",
]
