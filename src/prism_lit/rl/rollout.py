"""The multi-turn rollout engine: many episodes at once, one batched generation per env step.

Per step, for every live episode: the prompt is built by the shared :class:`AgentProtocol` (system prompt, the
task's first observation, the last ``history_turns`` turns, the current observation with its admissible actions)
and rendered with the tokenizer's chat template; all prompts are generated in one left-padded batch by a
generation backend (:class:`~prism_lit.rl.generation.KVCacheBackend`: the policy with a KV cache, kept per row
across turns in ``sequence`` mode so only the new tokens are prefilled); each reply is parsed by the protocol and
the env is stepped.
A malformed reply (``parse_action`` returns ``None``) gets ``invalid_action_penalty`` subtracted from its reward
and the reply text is still sent to the env (envs answer garbage with a normal observation), so the episode goes on.

Everything the losses need is recorded per step (:class:`Step`): prompt ids, action ids, the rollout policy's
log-probs of the action tokens, reward, done, validity. Environment tokens are never trained on: only
``action_ids`` are.

Group rollouts: :func:`group_tasks` repeats each task ``G`` times with the same env seed (GRPO / RLOO / GiGPO).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import torch

from prism_lit.envs.protocol import AgentProtocol, Turn
from prism_lit.envs.vector import EnvPool
from prism_lit.policy.chat import stop_token_ids
from prism_lit.rl.generation import GenerationBackend, KVCacheBackend, SamplingParams

EpisodeMode = Literal["auto", "sequence", "per_step"]
EPISODE_MODES = ("auto", "sequence", "per_step")
RewardSource = Literal["env", "won"]
REWARD_SOURCES = ("env", "won")
WON_REWARD = 10.0  # verl-agent's success reward; keeps the 0.1 invalid-action penalty small beside it


@dataclass
class RolloutConfig:
    """How episodes are played.

    Args:
        temperature: sampling temperature for training rollouts (log-probs use the same temperature).
        top_p: nucleus sampling mass for training rollouts (1.0 = off).
        max_new_tokens: reply length cap per step.
        max_steps: cap on env steps per episode (``None``: the env's own time limit only).
        invalid_action_penalty: subtracted from the step's reward when the reply cannot be parsed (verl-agent: 0.1).
        reward: what a step earns before the penalty. ``env`` (default): the env's own reward (WebShop: the
            purchase score in [0, 1], partial credit for a near-miss; ALFWorld: 1 when won). ``won``: 10 on the
            step that ends a won episode, 0 otherwise, as verl-agent rewards WebShop and ALFWorld, so a near-miss
            earns nothing.
        max_prompt_tokens: drop the oldest history turns until a prompt fits (``None``: the model's
            ``max_position_embeddings - max_new_tokens``).
        generation_batch_size: at most this many prompts per generation call (``None``: all live episodes).
        env_threads: step the envs in a thread pool of this size (:class:`~prism_lit.envs.vector.EnvPool`; 0 = in
            turn, the default; threads help only envs that release the GIL).
        episode_mode: ``sequence``: each row keeps its KV cache between turns and prefills only the tokens its
            new prompt adds (the new observation with a full history; from the first changed turn when a bounded
            window slides), and the update scores each run of steps whose prompts extend each other (a whole
            full-history episode) in one forward. ``per_step``: every prompt is prefilled whole and every step is
            scored on its own (the reference path). ``auto`` (default): ``sequence`` when the tokenizer's chat
            template renders conversation prefixes stably, else ``per_step``. Prompts, actions and log-probs are
            the same in both modes (up to floating-point rounding).
        draft_tokens: greedy generation (evaluation) verifies up to this many prompt-lookup draft tokens per forward
            (:class:`~prism_lit.rl.generation.KVCacheBackend`): the same greedy tokens in fewer forwards; 0 = off.
            Sampled rollouts are not affected.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_steps: int | None = None
    invalid_action_penalty: float = 0.1
    reward: RewardSource = "env"
    max_prompt_tokens: int | None = None
    generation_batch_size: int | None = None
    env_threads: int = 0
    episode_mode: EpisodeMode = "auto"
    draft_tokens: int = 3

    def __post_init__(self) -> None:
        if self.draft_tokens < 0:
            raise ValueError(f"rollout.draft_tokens must be >= 0, got {self.draft_tokens}")
        if self.reward not in REWARD_SOURCES:
            raise ValueError(f"rollout.reward {self.reward!r} is unknown; choose one of {REWARD_SOURCES}")
        if self.episode_mode not in EPISODE_MODES:
            raise ValueError(f"rollout.episode_mode {self.episode_mode!r} is unknown; choose one of {EPISODE_MODES}")


@dataclass
class Step:
    """One env step of one episode."""

    prompt_ids: list[int]
    action_ids: list[int]
    logprobs: list[float]
    observation: str  # the rendered user message shown for this step
    reply: str
    action: str | None  # parsed action; None = malformed
    reward: float  # what the step earned (RolloutConfig.reward) minus the penalty when malformed
    env_reward: float
    done: bool
    valid: bool


@dataclass
class Episode:
    """One played episode and the facts the metrics need."""

    task_id: str
    seed: int
    group: int
    task_type: str = ""
    steps: list[Step] = field(default_factory=list)
    won: bool = False
    score: float = 0.0
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # the env's ``info`` after the last step (env-specific facts)

    @property
    def ret(self) -> float:
        """Undiscounted return (env rewards plus penalties)."""
        return float(sum(s.reward for s in self.steps))

    @property
    def num_invalid(self) -> int:
        return sum(not s.valid for s in self.steps)


@dataclass
class RolloutStats:
    """Wall-clock split and counts of the last :meth:`RolloutEngine.run`."""

    generation_s: float = 0.0
    env_s: float = 0.0
    prompt_s: float = 0.0  # prompt building (chat template, tokenising) plus decoding and parsing replies
    env_steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0  # tokens of every step's whole prompt
    prefill_tokens: int = 0  # prompt tokens actually run through the model (fewer when the KV cache is kept)
    generation_calls: int = 0
    forwards: int = 0  # model calls of the generation backends that count them

    def add(self, other: RolloutStats) -> None:
        """Add ``other``'s times and counts to these (stats of several runs)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def group_tasks(task_ids: Sequence[str], seeds: Sequence[int], group_size: int) -> list[tuple[str, int, int]]:
    """``(task_id, seed, group)`` rows: each task ``group_size`` times with its seed; ``group`` = task position."""
    if len(task_ids) != len(seeds):
        raise ValueError(f"group_tasks: {len(task_ids)} task ids but {len(seeds)} seeds")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return [(t, int(s), g) for g, (t, s) in enumerate(zip(task_ids, seeds)) for _ in range(group_size)]


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make`` with the prism_lit ids registered (every EnvSpec, the guess-word smoke env included)."""
    import prism_lit.envs  # noqa: F401

    return gym.make(env_id, **dict(env_kwargs or {}))


def env_task_ids(env: gym.Env) -> list[str]:
    """The task ids an env instance can play (its ``task_ids`` attribute)."""
    ids = getattr(env.unwrapped, "task_ids", None)
    if callable(ids):
        ids = ids()
    if ids is None:
        raise AttributeError(
            f"{type(env.unwrapped).__name__} has no `task_ids`; give the task ids explicitly (RLTaskDataModule.task_ids)"
        )
    return [str(t) for t in ids]


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` with the generation prompt (handles BatchEncoding from transformers 5)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def renders_prefixes_stably(tokenizer, protocol: AgentProtocol) -> bool:
    """Whether the prompt of a turn, followed by its reply's tokens, starts the next turn's prompt (so a
    full-history episode is one token sequence). Checked on a two-turn conversation of the protocol's format."""
    reply = protocol.format_reply("click[item 1]")
    first = chat_prompt_ids(tokenizer, protocol.build_messages([], "Observation one: a page with items."))
    second = chat_prompt_ids(tokenizer, protocol.build_messages(
        [Turn("Observation one: a page with items.", reply)], "Observation two: another page."))
    reply_ids = list(tokenizer.encode(reply, add_special_tokens=False))
    n = len(first)
    return second[:n] == first and second[n:n + len(reply_ids)] == reply_ids


def resolve_episode_mode(mode: str, tokenizer, protocol: AgentProtocol) -> bool:
    """``rollout.episode_mode`` as a bool: True = sequence mode (see :class:`RolloutConfig`)."""
    if mode not in EPISODE_MODES:
        raise ValueError(f"rollout.episode_mode {mode!r} is unknown; choose one of {EPISODE_MODES}")
    if mode == "per_step":
        return False
    stable = renders_prefixes_stably(tokenizer, protocol)
    if mode == "sequence" and not stable:
        raise ValueError("rollout.episode_mode='sequence' needs a chat template that renders a conversation's "
                         "prefixes stably (a turn's prompt + reply starting the next prompt); this tokenizer's does "
                         "not: use episode_mode 'auto' or 'per_step'")
    return stable


class RolloutEngine:
    """Plays batches of episodes of one env with a policy. Env instances are created once and reused."""

    def __init__(
        self,
        env_id: str,
        protocol: AgentProtocol,
        tokenizer,
        config: RolloutConfig | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.protocol = protocol
        self.tokenizer = tokenizer
        self.config = config or RolloutConfig()
        self._pools: dict[int, EnvPool] = {}
        self.stats = RolloutStats()
        self.stop_token_ids = stop_token_ids(tokenizer)  # EOS, the template's end-of-turn, generation_config EOS ids
        self.sequence_mode = resolve_episode_mode(self.config.episode_mode, tokenizer, protocol)

    def make_backend(self, model) -> GenerationBackend:
        """The generation backend of one rollout (one per generation chunk); override to plug in another."""
        return KVCacheBackend(model, self.tokenizer.pad_token_id, self.tokenizer, reuse_cache=self.sequence_mode,
                              draft_tokens=self.config.draft_tokens)

    def sampling_params(self, greedy: bool) -> SamplingParams:
        cfg = self.config
        return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              greedy=greedy, stop_token_ids=self.stop_token_ids,
                              stop_strings=self.protocol.stop_strings)

    def pool(self, n: int) -> EnvPool:
        """The pool of ``n`` envs (created on first use and kept: env construction can be costly)."""
        if n not in self._pools:
            fns = [lambda: make_env(self.env_id, self.env_kwargs) for _ in range(n)]
            self._pools[n] = EnvPool(env_fns=fns, num_threads=self.config.env_threads)
        return self._pools[n]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}

    def _prompt(self, turns: list[Turn], current: str, limit: int) -> list[int]:
        """Prompt ids; the oldest history turns (never the first one, it holds the task) go until it fits."""
        history = min(self.protocol.history_turns, max(len(turns) - 1, 0))
        while True:
            kept = list(turns[:1]) + (list(turns[1:])[-history:] if history > 0 else [])
            ids = chat_prompt_ids(self.tokenizer, self.protocol.build_messages(kept, current))
            if len(ids) <= limit:
                return ids
            if history == 0:
                raise ValueError(
                    f"rollout: a prompt of {len(ids)} tokens does not fit max_prompt_tokens={limit} even with no "
                    "history; raise the limit (or the model's context), or shorten observations"
                )
            history -= 1

    def _prompt_limit(self, model) -> int:
        if self.config.max_prompt_tokens is not None:
            return self.config.max_prompt_tokens
        config = getattr(model, "config", None)
        max_pos = getattr(config, "max_position_embeddings", None) or 1_000_000
        return max_pos - self.config.max_new_tokens

    def run(
        self,
        model,
        tasks: Sequence[tuple[str, int, int]],
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[Episode]:
        """Play one episode per ``(task_id, seed, group)`` row, all at once; return them in row order."""
        cfg = self.config
        self.stats = RolloutStats()
        pool = self.pool(len(tasks))
        limit = self._prompt_limit(model)
        was_training = model.training
        model.eval()
        episodes = [Episode(task_id=t, seed=s, group=g) for t, s, g in tasks]
        turns: list[list[Turn]] = [[] for _ in tasks]
        start = time.perf_counter()
        observations, infos = pool.reset(seeds=[s for _, s, _ in tasks], options=[{"task_id": t} for t, _, _ in tasks])
        self.stats.env_s += time.perf_counter() - start
        admissible = [list(info.get("admissible_actions") or []) for info in infos]
        current = [self.protocol.render_observation(o, a) for o, a in zip(observations, admissible)]
        for episode, info in zip(episodes, infos):
            episode.task_type = str(info.get("task_type", ""))
        live = list(range(len(tasks)))
        params = self.sampling_params(greedy)
        chunk = cfg.generation_batch_size or len(tasks)
        backends = [self.make_backend(model) for _ in range(0, len(tasks), chunk)]
        try:
            while live:
                t0 = time.perf_counter()
                prompts = [self._prompt(turns[i], current[i], limit) for i in live]
                live_pos = {i: k for k, i in enumerate(live)}
                t1 = time.perf_counter()
                gens = [None] * len(live)
                for backend, rows in self._chunks(backends, live, chunk):
                    out = backend.generate(rows, [prompts[live_pos[i]] for i in rows], params, generator)
                    for i, g in zip(rows, out):
                        gens[live_pos[i]] = g
                    self.stats.generation_calls += 1
                t2 = time.perf_counter()
                replies = [self.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for g in gens]
                actions = [self.protocol.parse_action(r, admissible[i]) for i, r in zip(live, replies)]
                to_env: list[str | None] = [None] * len(tasks)
                for i, reply, action in zip(live, replies, actions):
                    to_env[i] = action if action is not None else reply  # envs answer garbage normally
                t3 = time.perf_counter()
                observations, rewards, terminated, truncated, infos = pool.step(to_env)
                t4 = time.perf_counter()
                self.stats.prompt_s += (t1 - t0) + (t3 - t2)
                self.stats.generation_s += t2 - t1
                self.stats.env_s += t4 - t3
                still_live = []
                for i, prompt, gen, reply, action in zip(live, prompts, gens, replies, actions):
                    valid = action is not None
                    env_reward, info = float(rewards[i]), infos[i]
                    episode = episodes[i]
                    hit_cap = cfg.max_steps is not None and len(episode.steps) + 1 >= cfg.max_steps
                    done = bool(terminated[i] or truncated[i] or hit_cap)
                    earned = env_reward if cfg.reward == "env" else WON_REWARD * float(done and bool(info.get("won")))
                    reward = earned - (0.0 if valid else cfg.invalid_action_penalty)
                    episode.steps.append(
                        Step(prompt_ids=prompt, action_ids=list(gen.token_ids), logprobs=list(gen.logprobs),
                             observation=current[i], reply=reply, action=action, reward=reward,
                             env_reward=env_reward, done=done, valid=valid)
                    )
                    self.stats.prompt_tokens += len(prompt)
                    self.stats.generated_tokens += len(gen.token_ids)
                    self.stats.env_steps += 1
                    turns[i].append(Turn(observation=current[i], reply=reply))
                    admissible[i] = list(info.get("admissible_actions") or [])
                    current[i] = self.protocol.render_observation(observations[i], admissible[i])
                    if done:
                        episode.won = bool(info.get("won", False))
                        episode.score = float(info.get("score", 1.0 if episode.won else 0.0))
                        episode.truncated = bool(truncated[i] or (hit_cap and not terminated[i]))
                        episode.task_type = str(info.get("task_type", episode.task_type))
                        episode.info = dict(info)
                    else:
                        still_live.append(i)
                for backend, rows in self._chunks(backends, [i for i in live if episodes[i].steps[-1].done], chunk):
                    backend.release(rows)
                live = still_live
        finally:
            model.train(was_training)
            self.stats.prefill_tokens = sum(b.prefill_tokens for b in backends)
            self.stats.forwards = sum(getattr(b, "forwards", 0) for b in backends)
        return episodes

    @staticmethod
    def _chunks(backends: list[GenerationBackend], rows: list[int], chunk: int):
        """``(backend, rows)`` for each generation chunk (row ``i`` always goes to backend ``i // chunk``)."""
        for c, backend in enumerate(backends):
            mine = [i for i in rows if i // chunk == c]
            if mine:
                yield backend, mine


def episode_table(episodes: Sequence[Episode], max_episodes: int = 4, max_chars: int = 300) -> str:
    """A Markdown table of sample episodes (step, observation, reply, reward) for TensorBoard's text tab."""

    def cell(text: str) -> str:
        text = " ".join(str(text).split())
        text = text if len(text) <= max_chars else text[: max_chars - 3] + "..."
        return text.replace("|", "\\|")

    lines = []
    for ep in list(episodes)[:max_episodes]:
        lines.append(f"**{cell(ep.task_id)}** ({ep.task_type}) won={ep.won} score={ep.score:.2f} "
                     f"return={ep.ret:.2f} steps={len(ep.steps)}\n")
        lines.append("| step | observation | reply | reward |")
        lines.append("|---|---|---|---|")
        for k, step in enumerate(ep.steps):
            flag = "" if step.valid else " (malformed)"
            lines.append(f"| {k} | {cell(step.observation)} | {cell(step.reply)}{flag} | {step.reward:.2f} |")
        lines.append("")
    return "\n".join(lines)
