"""Imitation and reward-learning algorithms as LightningModules."""

from tdimitation.algorithms.bc import BC, DemonstrationData

__all__ = ["BC", "DemonstrationData"]
