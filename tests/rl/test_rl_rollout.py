"""The rollout engine: KV-cached generation equals HF generate, recorded log-probs equal a fresh forward
(PPO ratio 1 at the first update), penalties, group seeds, bounded prompts, stop strings."""

import pytest
import torch
from rl_helpers import guess_word_protocol

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.policy import PolicySpec, load_policy
from prism_lit.rl.generation import generate, left_pad
from prism_lit.rl.rollout import RolloutConfig, RolloutEngine, episode_table, group_tasks
from prism_lit.rl.scoring import StepSample, collate_steps, policy_forward

TASKS = [f"guess_word/train/{i}" for i in range(8)]


@pytest.fixture(scope="module")
def gw_policy(gw_policy_dir):
    model, tokenizer = load_policy(PolicySpec(path=str(gw_policy_dir)))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def bpe_policy(tiny_policy_dir):
    model, tokenizer = load_policy(PolicySpec(path=str(tiny_policy_dir)))
    return model.eval(), tokenizer


def _prompts(tokenizer, texts):
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=True)["input_ids"] for t in texts]


def test_greedy_generation_equals_hf_generate_on_left_padded_prompts(bpe_policy):
    model, tok = bpe_policy
    prompts = _prompts(tok, ["search for a red chair", "hi", "click the first item and buy it now please"])
    mine = generate(model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                    max_new_tokens=8, greedy=True)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for row, g in enumerate(mine):
        expected = hf[row, ids.shape[1]:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert g.token_ids == expected


def test_recorded_logprobs_equal_a_fresh_forward_so_the_first_ratio_is_one(bpe_policy):
    model, tok = bpe_policy
    prompts = _prompts(tok, ["search for a red chair", "hi", "buy it"])
    gen = torch.Generator().manual_seed(0)
    outs = generate(model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                    max_new_tokens=10, temperature=0.7, top_p=0.9, generator=gen)
    samples = [StepSample(p, o.token_ids, o.logprobs) for p, o in zip(prompts, outs)]
    batch = collate_steps(samples, tok.pad_token_id)
    with torch.no_grad():
        fresh = policy_forward(model, batch, temperature=0.7).logprobs
    assert torch.allclose(fresh * batch.action_mask, batch.old_logprobs, atol=1e-5)
    ratio = ((fresh - batch.old_logprobs).exp() * batch.action_mask).sum() / batch.action_mask.sum()
    assert float(ratio) == pytest.approx(1.0, abs=1e-5)
    # the same numbers row by row without any padding (an independent oracle)
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            logits = model(torch.tensor([p + o.token_ids])).logits[0, len(p) - 1:-1].float() / 0.7
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(o.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(lp, torch.tensor(o.logprobs), atol=1e-5)


def test_top_p_restricts_sampling_to_the_nucleus():
    from prism_lit.rl.generation import sample_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tokens, logprobs = sample_tokens(logits, 1.0, 0.7, False, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert torch.allclose(logprobs[tokens == 0], torch.log(torch.tensor(0.5)))


def test_stop_strings_end_generation(bpe_policy):
    model, tok = bpe_policy
    prompts = _prompts(tok, ["search for a red chair"])
    free = generate(model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                    max_new_tokens=6, greedy=True)[0]
    first = tok.decode(free.token_ids[:1], skip_special_tokens=True)
    assert first, "the tiny model's first greedy token should decode to some text"
    stopped = generate(model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=[tok.eos_token_id],
                       max_new_tokens=6, greedy=True, tokenizer=tok, stop_strings=[first])[0]
    assert stopped.token_ids == free.token_ids[:1] and stopped.stopped


def test_malformed_replies_are_penalised_and_the_episode_goes_on(bpe_policy):
    model, tok = bpe_policy  # a random BPE model never writes "Action: ..."
    protocol = guess_word_protocol(reply_format="action", show_admissible=True)
    engine = RolloutEngine(GUESS_WORD_ID, protocol, tok, RolloutConfig(max_new_tokens=4, invalid_action_penalty=0.25),
                           env_kwargs={"max_attempts": 3})
    episodes = engine.run(model, group_tasks(TASKS[:2], [1, 2], 1), generator=torch.Generator().manual_seed(0))
    for ep in episodes:
        assert [s.valid for s in ep.steps] == [False, False, False]
        assert [s.reward for s in ep.steps] == [-0.25] * 3 and ep.ret == pytest.approx(-0.75)
        assert [s.done for s in ep.steps] == [False, False, True]
        assert ep.num_invalid == 3 and not ep.won
        assert all(len(s.action_ids) == len(s.logprobs) > 0 for s in ep.steps)
    assert engine.stats.env_steps == 6 and engine.stats.generated_tokens > 0


def test_group_members_share_the_env_seed_and_later_prompts_hold_the_history(gw_policy, gw_protocol):
    model, tok = gw_policy
    protocol = guess_word_protocol(show_admissible=True)
    engine = RolloutEngine(GUESS_WORD_ID, protocol, tok, RolloutConfig(max_new_tokens=2))
    episodes = engine.run(model, group_tasks(TASKS[:2], [11, 12], 3), generator=torch.Generator().manual_seed(0))
    assert [ep.group for ep in episodes] == [0, 0, 0, 1, 1, 1]
    first = [ep.steps[0].prompt_ids for ep in episodes]
    assert first[0] == first[1] == first[2] and first[3] == first[4] == first[5] and first[0] != first[3]
    long = [ep for ep in episodes if len(ep.steps) > 1]
    assert long, "a random policy should need more than one attempt somewhere"
    ep = long[0]
    text = tok.decode(ep.steps[1].prompt_ids)
    assert ep.steps[0].reply in text and len(ep.steps[1].prompt_ids) > len(ep.steps[0].prompt_ids)
    assert "won=" in episode_table(episodes)


def test_long_prompts_drop_old_history_and_fail_clearly_when_nothing_fits(gw_policy, gw_protocol):
    _model, tok = gw_policy
    engine = RolloutEngine(GUESS_WORD_ID, gw_protocol, tok, RolloutConfig(max_new_tokens=1))
    from prism_lit.envs.protocol import Turn

    turns = [Turn(observation="Guess the word . Clue: pet that purrs", reply="dog") for _ in range(6)]
    full = engine._prompt(turns, "Guess the word . Clue: pet that barks", limit=10_000)
    cut = engine._prompt(turns, "Guess the word . Clue: pet that barks", limit=len(full) - 1)
    assert len(cut) < len(full)
    assert cut[-12:] == full[-12:]  # the current observation is kept
    with pytest.raises(ValueError, match="max_prompt_tokens=5"):
        engine._prompt(turns, "Guess the word .", limit=5)


def test_won_reward_pays_ten_on_the_winning_step_only_and_leaves_the_episodes_unchanged(gw_policy):
    model, tok = gw_policy
    protocol = guess_word_protocol(show_admissible=True)
    rows = group_tasks(TASKS, list(range(8)), 2)
    played = {}
    for source in ("env", "won"):
        engine = RolloutEngine(GUESS_WORD_ID, protocol, tok, RolloutConfig(max_new_tokens=2, reward=source))
        played[source] = engine.run(model, rows, generator=torch.Generator().manual_seed(3))
    assert {ep.won for ep in played["won"]} == {True, False}, "the sample should hold won and lost episodes"
    for env_ep, won_ep in zip(played["env"], played["won"]):
        assert [s.action_ids for s in env_ep.steps] == [s.action_ids for s in won_ep.steps]
        penalties = [0.0 if s.valid else 0.1 for s in won_ep.steps]
        expected = [0.0] * (len(won_ep.steps) - 1) + [10.0 * won_ep.won]
        assert [s.reward for s in won_ep.steps] == pytest.approx([e - p for e, p in zip(expected, penalties)])
        assert [s.reward for s in env_ep.steps] == pytest.approx([s.env_reward - p for s, p in
                                                                  zip(env_ep.steps, penalties)])
    with pytest.raises(ValueError, match="rollout.reward 'score' is unknown"):
        RolloutConfig(reward="score")
