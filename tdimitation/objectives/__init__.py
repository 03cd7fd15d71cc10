"""Loss modules (torchrl ``LossModule`` style): declared keys, no training loops inside."""

from tdimitation.objectives.ppo import PPOClipLoss

__all__ = ["PPOClipLoss"]
