"""A human expert at the keyboard (for DAgger on discrete-action environments)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Categorical, MultiCategorical

from tdimitation.errors import PolicyError

#: Default keys per environment family: key name (pygame) -> action index.
DEFAULT_KEYMAPS: dict[str, dict[str, int]] = {
    "CartPole": {"left": 0, "right": 1},
    "MountainCar": {"left": 0, "down": 1, "space": 1, "right": 2},
    "LunarLander": {"space": 0, "left": 1, "up": 2, "right": 3},
}


class KeyboardExpert(TensorDictModuleBase):
    """Shows the current frame in a window and waits for a key; the key gives the action.

    Acts in a single sub-env built with ``render_mode="rgb_array"`` (the frame shown is
    that env's current state, so it must be the env being collected from). Keys map to
    action indices through ``keymap`` (default: arrows for CartPole, MountainCar and
    LunarLander; digits ``0``-``9`` always select that action index). Escape raises
    ``KeyboardInterrupt`` to stop collection.

    Args:
        env: the collecting env (``num_envs=1``, ``render_mode="rgb_array"``).
        keymap: pygame key name -> action index.
        scale: window scale factor.
    """

    def __init__(self, env, keymap: dict[str, int] | None = None, scale: float = 1.0) -> None:
        super().__init__()
        spec = env.full_action_spec_unbatched["action"]
        if not isinstance(spec, Categorical) or isinstance(spec, MultiCategorical):
            raise PolicyError(
                f"the keyboard expert needs a Discrete action space, got {spec.__class__.__name__}"
            )
        if env.num_envs != 1:
            raise PolicyError(
                f"a human acts in one environment: build the env with num_envs=1, "
                f"not {env.num_envs}"
            )
        family = next((k for k in DEFAULT_KEYMAPS if k in (env.env_id or "")), None)
        self.n_actions = int(spec.space.n)
        self.keymap = dict(keymap or DEFAULT_KEYMAPS.get(family, {}))
        self.keymap.update({str(i): i for i in range(min(self.n_actions, 10))})
        bad = {k: v for k, v in self.keymap.items() if not 0 <= v < self.n_actions}
        if bad:
            raise PolicyError(f"keymap actions {bad} are outside 0..{self.n_actions - 1}")
        self.env = env
        self.scale = float(scale)
        self._screen = None
        self.in_keys = ["observation"]
        self.out_keys = ["action"]

    def _show(self, frame) -> None:
        import pygame

        if self._screen is None:
            pygame.display.init()
            height, width = frame.shape[:2]
            size = (int(width * self.scale), int(height * self.scale))
            self._screen = pygame.display.set_mode(size)
            pygame.display.set_caption(f"{self.env.env_id}: keys {sorted(self.keymap)}")
        surface = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
        if self.scale != 1.0:
            surface = pygame.transform.scale(surface, self._screen.get_size())
        self._screen.blit(surface, (0, 0))
        pygame.display.flip()

    def read_action(self) -> int:
        """Block until a mapped key is pressed; return its action."""
        import pygame

        while True:
            event = pygame.event.wait()
            if event.type == pygame.QUIT:
                raise KeyboardInterrupt("the expert window was closed")
            if event.type != pygame.KEYDOWN:
                continue
            name = pygame.key.name(event.key)
            if name == "escape":
                raise KeyboardInterrupt("the expert pressed Escape")
            if name in self.keymap:
                return self.keymap[name]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        frames = self.env.render()
        if not frames or frames[0] is None:
            raise PolicyError(
                "the env does not render frames: build it with render_mode='rgb_array'"
            )
        self._show(frames[0])
        action = torch.full(tensordict.batch_size, self.read_action(), dtype=torch.int64)
        tensordict.set("action", action)
        return tensordict

    def close(self) -> None:
        """Close the window."""
        if self._screen is not None:
            import pygame

            pygame.display.quit()
            self._screen = None
