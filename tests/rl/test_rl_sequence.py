"""Full-history episodes as one sequence: the rollout keeps each row's KV cache between turns, the update scores a
chained episode in one forward. Both must give what the per-step path gives (log-probs to 1e-5 in fp32, the same
losses and gradients, the same greedy actions), plain and LoRA, left and right padding."""

import pytest
import torch
from rl_helpers import guess_word_protocol

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.policy import LoraSpec, PolicySpec, load_policy
from prism_lit.rl.generation import KVCacheBackend, SamplingParams, generate, length_groups, lookup_drafts
from prism_lit.rl.rollout import RolloutConfig, RolloutEngine, group_tasks, resolve_episode_mode
from prism_lit.rl.scoring import StepSample, chain_units, collate_steps, collate_units, policy_forward

TASKS = [f"guess_word/train/{i}" for i in range(8)]
PROTOCOL = guess_word_protocol(show_admissible=True, history_turns=10)


@pytest.fixture(scope="module")
def gw_policy(gw_policy_dir):
    model, tokenizer = load_policy(PolicySpec(path=str(gw_policy_dir)))
    return model.eval(), tokenizer


def _play(model, tok, mode, greedy=False, protocol=PROTOCOL, max_steps=None, rows=None, **config):
    engine = RolloutEngine(GUESS_WORD_ID, protocol, tok,
                           RolloutConfig(max_new_tokens=3, episode_mode=mode, max_steps=max_steps, **config),
                           env_kwargs={"max_attempts": 5})
    rows = rows or group_tasks(TASKS[:4], [1, 2, 3, 4], 2)
    episodes = engine.run(model, rows, greedy=greedy, generator=torch.Generator().manual_seed(0))
    engine.close()
    return episodes, engine.stats


def _samples(episodes):
    return [StepSample(s.prompt_ids, s.action_ids, s.logprobs, advantage=0.3 * (k % 3) - 0.2 + 0.1 * e,
                       ret=0.5 * k, old_value=0.1 * k)
            for e, ep in enumerate(episodes) for k, s in enumerate(ep.steps)]


@pytest.fixture(scope="module")
def episodes(gw_policy):
    model, tok = gw_policy
    episodes, _ = _play(model, tok, "sequence")
    return episodes


def test_full_history_episodes_chain_into_one_sequence_each(episodes):
    samples = _samples(episodes)
    units = chain_units(samples)
    assert max(len(ep.steps) for ep in episodes) >= 3, "a random policy should need several attempts"
    assert len(units) == len(episodes)  # every episode is one unit
    assert [len(u) for u in units] == [len(ep.steps) for ep in episodes]
    assert len(chain_units(samples, pack=False)) == len(samples)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("per_row_logits", [True, False])
def test_one_forward_per_episode_equals_the_per_step_forwards(gw_policy, episodes, side, per_row_logits):
    model, tok = gw_policy
    samples = _samples(episodes)
    units = [[samples[i] for i in u] for u in chain_units(samples)]
    with torch.no_grad():
        step_batch = collate_steps(samples, tok.pad_token_id)
        per_step = policy_forward(model, step_batch, 0.7, with_entropy=True, with_hidden=True)
        seq_batch = collate_units(units, tok.pad_token_id, side=side)
        packed = policy_forward(model, seq_batch, 0.7, with_entropy=True, with_hidden=True,
                                per_row_logits=per_row_logits)
    assert seq_batch.input_ids.shape[0] == len(episodes) < step_batch.input_ids.shape[0] == len(samples)
    assert seq_batch.attention_mask.sum() < step_batch.attention_mask.sum()  # fewer tokens run
    for name in ("action_ids", "action_mask", "old_logprobs", "advantages", "returns", "old_values"):
        assert torch.equal(getattr(seq_batch, name), getattr(step_batch, name)), name
    mask = step_batch.action_mask
    assert torch.allclose(packed.logprobs * mask, per_step.logprobs * mask, atol=1e-5)
    assert torch.allclose(packed.entropy * mask, per_step.entropy * mask, atol=1e-5)
    assert torch.allclose(packed.state_hidden, per_step.state_hidden, atol=1e-5)
    # and both equal the log-probs the rollout recorded (sampled at temperature 1)
    with torch.no_grad():
        fresh = policy_forward(model, seq_batch, 1.0).logprobs
    assert torch.allclose(fresh * mask, seq_batch.old_logprobs, atol=1e-5)


def test_collate_units_refuses_steps_that_do_not_chain():
    a = StepSample([1, 2, 3], [4], [0.0])
    b = StepSample([1, 2, 9, 5], [6], [0.0])
    with pytest.raises(ValueError, match="does not extend"):
        collate_units([[a, b]], 0)
    assert chain_units([a, b]) == [[0], [1]]


def _module(cls, policy_dir, mode, lora, **kwargs):
    torch.manual_seed(0)  # LoRA's A matrices are drawn at load time
    spec = PolicySpec(path=str(policy_dir), lora=LoraSpec(r=4, alpha=8) if lora else None)
    module = cls(policy=spec, protocol=PROTOCOL, env_id=GUESS_WORD_ID,
                 rollout={"episode_mode": mode, "temperature": 0.7, "max_new_tokens": 3}, **kwargs)
    module.configure_model()
    with torch.no_grad():  # a trained adapter / head, so every gradient is non-trivial
        for name, p in module.named_parameters():
            if "lora_B" in name or "value_head" in name:
                p.normal_(0.0, 0.05)
    module.manual_backward = lambda loss: loss.backward()  # outside a Trainer
    return module


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("algorithm", ["GRPOModule", "PPOModule"])
def test_losses_and_gradients_match_the_per_step_update(gw_policy_dir, episodes, algorithm, lora):
    import prism_lit.rl as rl

    cls = getattr(rl, algorithm)
    kwargs = {"update": {"micro_batch_size": 4}, "entropy_coef": 0.01}
    if not lora:
        kwargs["kl"] = {"coef": 0.05}
    results = {}
    for mode in ("per_step", "sequence"):
        module = _module(cls, gw_policy_dir, mode, lora, **kwargs)
        samples = module.build_samples(episodes) if algorithm == "PPOModule" else _samples(episodes)
        if not lora:  # a reference that differs from the policy, so the KL term has a gradient
            with torch.no_grad():
                for p in module.ref_model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        assert module.packs_episodes() == (mode == "sequence")
        assert len(module.micro_batches(samples)) < len(samples) / 4 + 1 or mode == "per_step"
        module.model.zero_grad(set_to_none=True)
        logs = module.minibatch_backward(samples)
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results[mode] = (logs, grads, [v for s in samples for v in (s.advantage, s.ret, s.old_value)])
    (logs_a, grads_a, targets_a), (logs_b, grads_b, targets_b) = results["per_step"], results["sequence"]
    assert targets_a == pytest.approx(targets_b, abs=1e-5)  # PPO's values at each turn's last prompt token
    assert logs_a.keys() == logs_b.keys()
    for name in logs_a:
        assert logs_b[name] == pytest.approx(logs_a[name], rel=1e-4, abs=1e-6), name
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6), name
    assert any(float(g.abs().sum()) > 0 for g in grads_a.values())


@pytest.mark.parametrize("protocol,max_steps", [(PROTOCOL, None), (guess_word_protocol(history_turns=1), 5)])
def test_kv_cache_across_turns_gives_the_per_step_rollout(gw_policy, protocol, max_steps):
    """Greedy: the same actions and tokens; sampled with one seed: the same draws; log-probs to 1e-5. A bounded
    history (the window slides every step) re-prefills from the first changed turn."""
    model, tok = gw_policy
    for greedy in (True, False):
        old, old_stats = _play(model, tok, "per_step", greedy, protocol, max_steps)
        new, new_stats = _play(model, tok, "sequence", greedy, protocol, max_steps)
        assert [[s.action_ids for s in ep.steps] for ep in new] == [[s.action_ids for s in ep.steps] for ep in old]
        assert [[s.prompt_ids for s in ep.steps] for ep in new] == [[s.prompt_ids for s in ep.steps] for ep in old]
        assert [ep.ret for ep in new] == [ep.ret for ep in old]
        for a, b in zip(old, new):
            for sa, sb in zip(a.steps, b.steps):
                assert sa.logprobs == pytest.approx(sb.logprobs, abs=1e-5)
        assert old_stats.prefill_tokens == old_stats.prompt_tokens == new_stats.prompt_tokens
        assert new_stats.prefill_tokens < 0.6 * old_stats.prefill_tokens


def test_generation_chunks_keep_their_rows(gw_policy):
    model, tok = gw_policy
    old, _ = _play(model, tok, "per_step", True)
    new, stats = _play(model, tok, "sequence", True, generation_batch_size=3)
    assert [[s.action_ids for s in ep.steps] for ep in new] == [[s.action_ids for s in ep.steps] for ep in old]
    assert stats.generation_calls > len(max(new, key=lambda e: len(e.steps)).steps)


def test_backend_reuses_masks_and_compacts_the_cache(gw_policy):
    """Rows that grow, one whose prompt diverges inside its cached tokens, one released: each reply equals a fresh
    generation from its whole prompt, with only the new tokens prefilled."""
    model, tok = gw_policy
    params = SamplingParams(max_new_tokens=4, greedy=True, stop_token_ids=[tok.eos_token_id])
    ids = [tok.encode(t, add_special_tokens=False) for t in ["guess the word apple fruit", "clue red animal fox",
                                                             "word banana yellow"]]
    backend = KVCacheBackend(model, tok.pad_token_id, tok, reuse_cache=True, compact_at=0.2)
    first = backend.generate([0, 1, 2], ids, params)
    grown = [ids[0] + first[0].token_ids + ids[1], ids[1][:2] + ids[2], ids[2] + first[2].token_ids + ids[0]]
    before = backend.prefill_tokens
    second = backend.generate([0, 1, 2], grown, params)
    # the new tokens, plus the last reply token of a row cut at max_new_tokens unless a greedy draft fed it
    new_tokens = len(ids[1]) + len(ids[2]) + len(ids[0])
    assert new_tokens <= backend.prefill_tokens - before <= (new_tokens + int(not first[0].stopped)
                                                              + int(not first[2].stopped))
    fresh = generate(model, grown, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                     max_new_tokens=4, greedy=True)
    assert [g.token_ids for g in second] == [g.token_ids for g in fresh]
    for a, b in zip(second, fresh):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    backend.release([1])
    third = backend.generate([2, 0], [grown[2] + second[2].token_ids + ids[1], grown[0]], params)
    fresh = generate(model, [grown[2] + second[2].token_ids + ids[1], grown[0]], pad_token_id=tok.pad_token_id,
                     stop_token_ids=[tok.eos_token_id], max_new_tokens=4, greedy=True)
    assert [g.token_ids for g in third] == [g.token_ids for g in fresh]
    assert backend._mask.shape[0] == 2


def test_episode_mode_resolution(gw_policy):
    _, tok = gw_policy
    assert resolve_episode_mode("auto", tok, PROTOCOL) is True
    assert resolve_episode_mode("per_step", tok, PROTOCOL) is False

    class Unstable:  # a template that renders history turns differently from the generation prompt
        def __init__(self, inner):
            self.inner = inner

        def apply_chat_template(self, messages, **kwargs):
            out = self.inner.apply_chat_template(messages, **kwargs)
            ids = list(out["input_ids"] if hasattr(out, "keys") else out)
            return ids + [ids[-1]] * (len(messages) % 4 == 2)

        def encode(self, text, **kwargs):
            return self.inner.encode(text, **kwargs)

    assert resolve_episode_mode("auto", Unstable(tok), PROTOCOL) is False
    with pytest.raises(ValueError, match="episode_mode='sequence'"):
        resolve_episode_mode("sequence", Unstable(tok), PROTOCOL)
    with pytest.raises(ValueError, match="rollout.episode_mode"):
        RolloutConfig(episode_mode="packed")


def test_stop_strings_spanning_tokens_stop_where_the_decoded_reply_first_holds_them(gw_policy_dir):
    """Only rows whose new token may complete a stop string are decoded; the result is the full-decode rule's."""
    model, tok = load_policy(PolicySpec(path=str(gw_policy_dir)))
    model.eval()
    prompts = [tok.encode(t, add_special_tokens=False) for t in ["guess the word apple", "clue red fox", "banana"]]
    kwargs = {"pad_token_id": tok.pad_token_id, "stop_token_ids": [tok.eos_token_id], "max_new_tokens": 8,
              "greedy": True}
    free = generate(model, prompts, **kwargs)
    row = max(free, key=lambda g: len(g.token_ids)).token_ids
    assert len(row) >= 3
    text = tok.decode(row[:3], skip_special_tokens=True)
    cut = len(tok.decode(row[:2], skip_special_tokens=True))
    stop = text[cut - 2:cut + 1]  # spans the boundary of the second and third tokens
    stopped = generate(model, prompts, **kwargs, tokenizer=tok, stop_strings=[stop, "never-there"])
    assert len(stop) == 3 and any(len(s.token_ids) < len(f.token_ids) for f, s in zip(free, stopped))
    for f, s in zip(free, stopped):
        ends = [t for t in range(len(f.token_ids)) if stop in tok.decode(f.token_ids[:t + 1], skip_special_tokens=True)]
        expected = f.token_ids[:ends[0] + 1] if ends else f.token_ids
        assert s.token_ids == expected and s.logprobs == pytest.approx(f.logprobs[:len(expected)], abs=1e-6)
        assert s.stopped == (bool(ends) or f.stopped)


def test_greedy_evaluation_is_the_same_in_both_modes(gw_policy, gw_protocol):
    from prism_lit.rl import evaluate_policy

    model, tok = gw_policy
    results = [evaluate_policy(model, tok, PROTOCOL, GUESS_WORD_ID, {"max_attempts": 4}, TASKS, max_new_tokens=3,
                               batch_size=4, return_episodes=True, episode_mode=mode) for mode in ("per_step", "auto")]
    episodes = [r.pop("episodes_list") for r in results]
    assert results[0] == results[1]
    assert [[s.action_ids for s in e.steps] for e in episodes[0]] == [[s.action_ids for s in e.steps]
                                                                      for e in episodes[1]]


def test_the_decode_batch_shrinks_and_rows_that_stopped_keep_their_cache(gw_policy):
    """Three of four rows stop at their first token: the last one decodes alone; next turn every row's reused
    cache gives what a fresh prefill of its whole prompt gives."""
    import prism_lit.rl.generation as generation

    model, tok = gw_policy
    ids = [tok.encode(t, add_special_tokens=False) for t in ["guess the word apple fruit", "clue red animal fox",
                                                             "word banana yellow", "the animal dog"]]
    free = generate(model, ids, pad_token_id=tok.pad_token_id, stop_token_ids=[], max_new_tokens=6, greedy=True)
    stops = sorted({g.token_ids[0] for g in free[:3]} - {free[3].token_ids[0]})
    assert len(stops) >= 2, "the tiny model should start some replies differently"
    params = SamplingParams(max_new_tokens=6, greedy=True, stop_token_ids=stops)
    backend = KVCacheBackend(model, tok.pad_token_id, tok, reuse_cache=True)
    merged = []
    original = generation._cache_tensors
    generation._cache_tensors = lambda cache: merged.append(1) or original(cache)
    try:
        first = backend.generate([0, 1, 2, 3], ids, params)
    finally:
        generation._cache_tensors = original
    assert merged, "the batch should have shrunk"
    assert sum(len(g.token_ids) == 1 for g in first) >= 2 and len(first[3].token_ids) > 1
    grown = [p + g.token_ids + ids[(k + 1) % 4] for k, (p, g) in enumerate(zip(ids, first))]
    second = backend.generate([0, 1, 2, 3], grown, params)
    fresh = generate(model, grown, pad_token_id=tok.pad_token_id, stop_token_ids=stops, max_new_tokens=6,
                     greedy=True)
    assert [g.token_ids for g in second] == [g.token_ids for g in fresh]
    for a, b in zip(second, fresh):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_bounded_history_chains_until_the_window_slides(gw_policy):
    """history_turns=1: step 2's prompt still holds every turn (the first is always kept), step 3 drops one."""
    model, tok = gw_policy
    episodes, _ = _play(model, tok, "sequence", protocol=guess_word_protocol(history_turns=1))
    long = [ep for ep in episodes if len(ep.steps) == 5]
    assert long, "a random policy should use all five attempts somewhere"
    for ep in long:
        samples = _samples([ep])
        assert chain_units(samples) == [[0, 1, 2], [3], [4]]


def test_lookup_drafts_copy_what_followed_the_latest_earlier_ngram():
    context = torch.tensor([[5, 6, 7, 8, 5, 6, -1],   # tail (5, 6) seen at 0: 7 8 5
                            [-1, -1, 1, 2, 3, 4, 9],  # 9 never seen before: no draft
                            [-1, -1, -1, -1, 1, 2, 1]])  # tail 1 seen at 4: 2 1, then nothing known yet
    ends = torch.tensor([6, 7, 7])
    assert lookup_drafts(context, ends, 3, pad=0).tolist() == [[7, 8, 5], [0, 0, 0], [2, 1, 0]]
    assert lookup_drafts(context[1:2], ends[1:2], 3, pad=0) is None


def test_greedy_drafts_give_the_tokens_of_one_token_steps_in_fewer_forwards(gw_policy):
    """Greedy with prompt-lookup drafts, a cache kept over two turns, a stop token and a stop string: the same
    tokens and stops as one token per forward, log-probs to 1e-5."""
    model, tok = gw_policy
    ids = [tok.encode(t, add_special_tokens=False) for t in ["guess the word apple fruit apple fruit",
                                                             "clue red animal fox red animal", "word banana yellow"]]
    params = SamplingParams(max_new_tokens=8, greedy=True, stop_token_ids=[tok.eos_token_id],
                            stop_strings=["animal fox"])
    runs = {}
    for drafts in (0, 3):
        backend = KVCacheBackend(model, tok.pad_token_id, tok, reuse_cache=True, draft_tokens=drafts)
        first = backend.generate([0, 1, 2], ids, params)
        grown = [ids[i] + first[i].token_ids + ids[(i + 1) % 3] for i in range(3)]
        second = backend.generate([0, 1, 2], grown, params)
        runs[drafts] = (first + second, backend.forwards)
    for a, b in zip(runs[0][0], runs[3][0], strict=True):
        assert a.token_ids == b.token_ids and a.stopped == b.stopped
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert runs[3][1] < runs[0][1]


def test_rows_whose_new_tokens_differ_widely_are_prefilled_in_groups(gw_policy):
    """A kept cache, one row adding ~200 tokens and one adding 2: prefilled in two groups, the replies equal a
    fresh generation from the whole prompts."""
    model, tok = gw_policy
    params = SamplingParams(max_new_tokens=4, greedy=True, stop_token_ids=[tok.eos_token_id])
    ids = [tok.encode(t, add_special_tokens=False) for t in ["guess the word apple fruit", "clue red animal fox",
                                                             "word banana yellow"]]
    long = (ids[0] + ids[1] + ids[2]) * 14
    backend = KVCacheBackend(model, tok.pad_token_id, tok, reuse_cache=True, draft_tokens=0)
    first = backend.generate([0, 1, 2], ids, params)
    grown = [ids[0] + first[0].token_ids + long, ids[1] + first[1].token_ids + ids[2][:2],
             ids[2] + first[2].token_ids + long[:150]]
    new = [len(g) - len(t) for g, t in zip(grown, backend._tokens)]
    assert len(length_groups(new)) == 2
    second = backend.generate([0, 1, 2], grown, params)
    fresh = generate(model, grown, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                     max_new_tokens=4, greedy=True)
    assert [g.token_ids for g in second] == [g.token_ids for g in fresh]
    for a, b in zip(second, fresh):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
