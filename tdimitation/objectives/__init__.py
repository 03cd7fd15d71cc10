"""Loss modules (torchrl ``LossModule`` style): declared keys, no training loops inside."""

from tdimitation.objectives.adversarial import AIRLDiscriminatorLoss, DiscriminatorLoss
from tdimitation.objectives.bc import BCLoss
from tdimitation.objectives.ppo import PPOClipLoss

__all__ = ["AIRLDiscriminatorLoss", "BCLoss", "DiscriminatorLoss", "PPOClipLoss"]
