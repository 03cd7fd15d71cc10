"""tdimitation: reward and imitation learning on torchrl, tensordict and Lightning."""

__version__ = "0.1.0"
