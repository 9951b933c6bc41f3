"""EnvPool: step many text envs at once, with per-env control and no autoreset.

Rollouts of LLM agents run a batch of episodes until each one ends, and they decide per env when to act,
so Gymnasium's vector API (which autoresets finished envs) does not fit. Here a finished env is left alone:
its slot keeps returning its last observation and info, reward 0, and its terminated/truncated flags.
An action of ``None`` means "do not step this env now" (reward 0, flags unchanged).

    pool = EnvPool(env_id="prism_lit/WebShop-v0", n=8, env_kwargs={"split": "train"})
    obs, infos = pool.reset(seeds=range(8))
    while not pool.all_done:
        obs, rewards, terminated, truncated, infos = pool.step(actions)   # list[str | None]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["EnvPool"]


class EnvPool:
    """A fixed set of envs stepped together.

    Args:
        env_fns: callables that each build one env; or give ``env_id`` and ``n`` (and ``env_kwargs``)
            to ``gymnasium.make`` ``n`` copies.
        num_threads: step envs in a thread pool of this size (0 or 1: sequentially, the default; threads
            help only when envs release the GIL, e.g. a subprocess-backed engine).
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]] | None = None,
        *,
        env_id: str | None = None,
        n: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        num_threads: int = 0,
    ):
        if env_fns is None:
            if env_id is None or n is None:
                raise ValueError("EnvPool: pass env_fns, or env_id and n")
            if n < 1:
                raise ValueError(f"EnvPool: n must be >= 1, got {n}")
            import prism_lit.envs  # noqa: F401  (registers the prism_lit ids)

            kwargs = dict(env_kwargs or {})
            env_fns = [lambda: gym.make(env_id, **kwargs) for _ in range(n)]
        elif env_id is not None or n is not None:
            raise ValueError("EnvPool: pass either env_fns or env_id/n, not both")
        if len(env_fns) == 0:
            raise ValueError("EnvPool: no envs")
        self.envs: list[gym.Env] = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self._executor = ThreadPoolExecutor(num_threads) if num_threads > 1 else None
        self._obs: list[Any] = [None] * self.num_envs
        self._infos: list[dict] = [{} for _ in range(self.num_envs)]
        self.terminated = np.zeros(self.num_envs, dtype=bool)
        self.truncated = np.zeros(self.num_envs, dtype=bool)
        self.returns = np.zeros(self.num_envs, dtype=np.float64)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self._started = False

    # ------------------------------------------------------------------ helpers
    def _map(self, fn: Callable[[int], Any], indices: Sequence[int]) -> list[Any]:
        if self._executor is None or len(indices) < 2:
            return [fn(i) for i in indices]
        return list(self._executor.map(fn, indices))

    def _per_env(self, values: Sequence[Any] | None, name: str) -> list[Any]:
        if values is None:
            return [None] * self.num_envs
        values = list(values)
        if len(values) != self.num_envs:
            raise ValueError(f"EnvPool: {name} has {len(values)} entries for {self.num_envs} envs")
        return values

    @property
    def done(self) -> np.ndarray:
        """Per env: terminated or truncated."""
        return self.terminated | self.truncated

    @property
    def all_done(self) -> bool:
        return bool(self.done.all())

    @property
    def observations(self) -> list[Any]:
        return list(self._obs)

    @property
    def infos(self) -> list[dict]:
        return list(self._infos)

    # ------------------------------------------------------------------ API
    def reset(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict | None] | None = None,
    ) -> tuple[list[Any], list[dict]]:
        """Reset every env (``seeds[i]``, ``options[i]`` for env ``i``); returns observations and infos."""
        seeds, options = self._per_env(seeds, "seeds"), self._per_env(options, "options")

        def one(i: int) -> tuple[Any, dict]:
            return self.envs[i].reset(seed=seeds[i], options=options[i])

        for i, (obs, info) in enumerate(self._map(one, range(self.num_envs))):
            self._obs[i], self._infos[i] = obs, info
        self.terminated[:] = False
        self.truncated[:] = False
        self.returns[:] = 0.0
        self.steps[:] = 0
        self._started = True
        return self.observations, self.infos

    def step(
        self, actions: Sequence[Any | None]
    ) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step the envs that are running and got an action; returns per-env lists/arrays.

        ``rewards`` is this step's reward (0 for envs not stepped); ``terminated``/``truncated`` are the
        envs' current flags (a finished env stays finished until the next :meth:`reset`).
        """
        if not self._started:
            raise RuntimeError("EnvPool.step called before reset")
        actions = self._per_env(actions, "actions")
        active = [i for i in range(self.num_envs) if actions[i] is not None and not self.done[i]]

        def one(i: int) -> tuple:
            return self.envs[i].step(actions[i])

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        for i, (obs, reward, terminated, truncated, info) in zip(active, self._map(one, active)):
            self._obs[i], self._infos[i] = obs, info
            rewards[i] = float(reward)
            self.terminated[i], self.truncated[i] = bool(terminated), bool(truncated)
            self.returns[i] += float(reward)
            self.steps[i] += 1
        return self.observations, rewards, self.terminated.copy(), self.truncated.copy(), self.infos

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_envs
