"""tdimitation: reward and imitation learning on torchrl, tensordict and Lightning."""

__version__ = "0.1.0"


def _quiet_lightning() -> None:
    """Silence Lightning's start-of-fit banners unless the user configured its logger.

    "GPU available: ...", "TPU available: ..." and the "Tip" lines go through Lightning's
    rank-zero logger at INFO; its warnings still show.
    """
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


_quiet_lightning()
