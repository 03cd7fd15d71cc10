"""Clips of fragments for the labelling page: animated GIFs, cached on disk by content.

Frames come from the fragment's ``pixels`` key when it has one (image observations or
frames recorded by the env); otherwise gymnasium's ``rgb_array`` renderer draws each step
from the observation, for the classic-control envs whose state the observation determines
(``STATE_FROM_OBSERVATION``). A clip's file name is the hash of its frames' source, so the
same fragment is rendered once, and a restarted process finds its clips again.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tensordict import TensorDictBase

from tdimitation.errors import LabellingError

CLIP_NAME = re.compile(r"^[0-9a-f]{40}\.gif$")


def _pendulum(obs: np.ndarray) -> np.ndarray:
    return np.array([np.arctan2(obs[1], obs[0]), obs[2]])


def _acrobot(obs: np.ndarray) -> np.ndarray:
    return np.array([np.arctan2(obs[1], obs[0]), np.arctan2(obs[3], obs[2]), obs[4], obs[5]])


# Env id prefix -> the unwrapped env's ``state`` from one observation.
STATE_FROM_OBSERVATION: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "CartPole": lambda obs: np.asarray(obs, dtype=np.float64),
    "MountainCar": lambda obs: np.asarray(obs, dtype=np.float64),
    "Pendulum": _pendulum,
    "Acrobot": _acrobot,
}


class ClipRenderer:
    """Writes a fragment's clip as a GIF under ``clip_dir`` and returns its file name.

    Args:
        clip_dir: where clips are cached (created if missing).
        env_id: the env whose renderer draws observations (needed without ``pixels``).
        fps: frames per second of the clips.
        scale: size factor of the rendered frames (smaller clips load faster).
    """

    def __init__(
        self,
        clip_dir: str | os.PathLike,
        env_id: str | None = None,
        fps: float = 20.0,
        scale: float = 0.5,
    ) -> None:
        self.clip_dir = Path(clip_dir)
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        self.env_id = env_id
        self.fps = float(fps)
        self.scale = float(scale)
        self._env = None
        self._state_fn = None

    def _renderer(self):
        if self._env is None:
            prefix = next(
                (p for p in STATE_FROM_OBSERVATION if self.env_id and p in self.env_id), None
            )
            if prefix is None:
                raise LabellingError(
                    f"cannot draw clips of {self.env_id!r} from observations; record frames in "
                    f"the fragments' 'pixels' key or use one of {sorted(STATE_FROM_OBSERVATION)}"
                )
            import gymnasium as gym

            # pygame opens no window for rgb_array, but SDL still wants a video driver.
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            self._env = gym.make(self.env_id, render_mode="rgb_array")
            self._env.reset(seed=0)
            self._state_fn = STATE_FROM_OBSERVATION[prefix]
        return self._env

    def frames(self, fragment: TensorDictBase) -> list[np.ndarray]:
        """RGB uint8 frames ``[H, W, 3]`` of a fragment (``[L]`` TensorDict)."""
        if "pixels" in fragment.keys():
            return [np.asarray(f[..., :3], dtype=np.uint8) for f in fragment.get("pixels").numpy()]
        env = self._renderer()
        out = []
        for obs in fragment.get("observation").double().numpy():
            env.unwrapped.state = self._state_fn(obs)
            out.append(np.asarray(env.render())[..., :3])
        return out

    def render(self, fragment: TensorDictBase) -> str:
        """The clip's file name (rendered now unless cached)."""
        key = "pixels" if "pixels" in fragment.keys() else "observation"
        source = fragment.get(key).contiguous()
        digest = hashlib.sha1(
            f"{self.env_id}|{self.fps}|{self.scale}|{key}".encode() + source.cpu().numpy().tobytes()
        ).hexdigest()
        name = f"{digest}.gif"
        path = self.clip_dir / name
        if not path.exists():
            self._write(path, self.frames(fragment))
        return name

    def _write(self, path: Path, frames: list[np.ndarray]) -> None:
        from PIL import Image

        images = []
        for frame in frames:
            image = Image.fromarray(frame)
            if self.scale != 1.0:
                size = (
                    max(1, round(image.width * self.scale)),
                    max(1, round(image.height * self.scale)),
                )
                image = image.resize(size, Image.Resampling.BILINEAR)
            images.append(image.quantize(256, method=Image.Quantize.FASTOCTREE))
        # GIF delays are in 10 ms units; browsers slow delays under 20 ms down.
        duration = max(int(round(1000 / self.fps)), 20)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )
        os.replace(tmp, path)

    def close(self) -> None:
        """Close the rendering env."""
        if self._env is not None:
            self._env.close()
            self._env = None


def clip_path(clip_dir: str | os.PathLike, name: str) -> Path | None:
    """The file of clip ``name`` inside ``clip_dir``, or None for any other name (path
    traversal, other suffixes) or a missing file.
    """
    if not CLIP_NAME.match(name):
        return None
    root = Path(clip_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


__all__ = ["ClipRenderer", "STATE_FROM_OBSERVATION", "clip_path"]
