"""Assistant-only masks, checked token by token against a real chat template; truncation policies."""

import random

import pytest

from prism_lit.data.batching import bucketed_batches, collate, padding_overhead
from prism_lit.data.schema import Message, Trajectory
from prism_lit.data.tokenize import IGNORE_INDEX, SampleTooLongError, tokenize_trajectory
from prism_lit.policy import PolicySpec, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir):
    return load_tokenizer(PolicySpec(path=str(tiny_policy_dir)))


def _traj(loss_first=None):
    return Trajectory("a", "webshop", "webshop/train/0", "beauty", [
        Message("system", "sys prompt"), Message("user", "find red soap"),
        Message("assistant", "Action: search[red soap]", loss_first), Message("user", "1. red soap [SEP] 2. blue"),
        Message("assistant", "Action: click[1]"),
    ])


def _trained_text(tokenizer, sample):
    """The decoded trained spans (the embedded tokenizer decodes "[x" as "[ x"; undone here)."""
    spans, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current).replace("[ ", "["))
            current = []
    if current:
        spans.append(tokenizer.decode(current).replace("[ ", "["))
    return spans


def test_mask_covers_exactly_assistant_content_and_end_token(tokenizer):
    sample = tokenize_trajectory(_traj(), tokenizer)
    assert _trained_text(tokenizer, sample) == ["Action: search[red soap]<|im_end|>", "Action: click[1]<|im_end|>"]
    # the role header and the newline after <|im_end|> are not trained
    text = tokenizer.decode(sample.input_ids)
    assert text.count("<|im_start|>assistant\n") == 2


def test_per_turn_loss_flag_is_honoured(tokenizer):
    sample = tokenize_trajectory(_traj(loss_first=False), tokenizer)
    assert _trained_text(tokenizer, sample) == ["Action: click[1]<|im_end|>"]


def test_context_weight_trains_every_token_with_the_assistant_turns_at_full_weight(tokenizer):
    """Language modelling on the whole interaction text (how the embedded base gets its prior knowledge)."""
    plain = tokenize_trajectory(_traj(), tokenizer)
    sample = tokenize_trajectory(_traj(), tokenizer, context_weight=0.25)
    assert sample.labels == sample.input_ids == plain.input_ids
    full = [t for t, w in zip(sample.input_ids, sample.weights) if w == 1.0]
    assert full == [t for t in plain.labels if t != IGNORE_INDEX]
    assert set(sample.weights) == {1.0, 0.25}
    cut = tokenize_trajectory(_traj(), tokenizer, max_length=10, context_weight=0.25, truncation="left")
    assert cut.weights == sample.weights[-10:]
    with pytest.raises(ValueError, match="context_weight must be in"):
        tokenize_trajectory(_traj(), tokenizer, context_weight=2.0)


def test_weighted_loss_equals_an_independent_computation(tokenizer, tiny_policy_dir):
    import torch

    from prism_lit.data.batching import collate
    from prism_lit.sft import SFTModule

    rows = []
    for cw in (0.25, 0.25):
        s = tokenize_trajectory(_traj(), tokenizer, context_weight=cw)
        rows.append({"id": "a", "task_id": "t", "task_type": "x", "input_ids": s.input_ids, "labels": s.labels,
                     "weights": s.weights})
    rows[1] = {**rows[1], "input_ids": rows[1]["input_ids"][:-3], "labels": rows[1]["labels"][:-3],
               "weights": rows[1]["weights"][:-3]}
    batch = collate(rows, pad_id=0)
    module = SFTModule(PolicySpec(path=str(tiny_policy_dir)))
    module.configure_model()
    got = module.weighted_loss(batch)
    num = den = 0.0
    for r in rows:  # one sequence at a time, token by token
        torch.set_grad_enabled(False)
        logits = module.model(input_ids=torch.tensor([r["input_ids"]])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        for t in range(1, len(r["input_ids"])):
            num += -float(logp[t - 1, r["input_ids"][t]]) * r["weights"][t]
            den += r["weights"][t]
    torch.set_grad_enabled(True)
    assert abs(float(got.detach()) - num / den) < 1e-4


def test_template_with_injected_default_system_prompt(tokenizer):
    """A Qwen-like template that adds a system prompt when none is given still yields exact masks."""
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nDefault helper.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    traj = _traj()
    traj.messages = traj.messages[1:]
    sample = tokenize_trajectory(traj, tokenizer)
    assert _trained_text(tokenizer, sample) == ["Action: search[red soap]<|im_end|>", "Action: click[1]<|im_end|>"]


def test_truncation_policies(tokenizer):
    full = tokenize_trajectory(_traj(), tokenizer)
    n = len(full.input_ids)
    right = tokenize_trajectory(_traj(), tokenizer, max_length=n - 5, truncation="right")
    assert right.input_ids == full.input_ids[: n - 5] and right.truncated
    left = tokenize_trajectory(_traj(), tokenizer, max_length=n - 5, truncation="left")
    assert left.input_ids == full.input_ids[5:] and left.labels == full.labels[5:]
    assert tokenize_trajectory(_traj(), tokenizer, max_length=n - 5, truncation="skip") is None
    with pytest.raises(SampleTooLongError, match=f"{n} tokens, over max_length={n - 5}"):
        tokenize_trajectory(_traj(), tokenizer, max_length=n - 5, truncation="fail")
    # cut before any assistant token: nothing left to train -> skipped
    assert tokenize_trajectory(_traj(), tokenizer, max_length=8, truncation="right") is None


def test_bucketing_removes_padding_and_keeps_every_sample():
    rng = random.Random(0)
    lengths = [rng.randint(200, 2000) for _ in range(2000)]
    bucketed = bucketed_batches(lengths, 8, seed=1)
    plain = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]
    assert sorted(i for b in bucketed for i in b) == list(range(len(lengths)))
    assert padding_overhead(lengths, plain) > 1.5
    assert padding_overhead(lengths, bucketed) < 1.02
    capped = bucketed_batches(lengths, 8, max_tokens=4000, seed=1)
    assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 4000 for b in capped)
    assert bucketed_batches(lengths, 8, seed=1) == bucketed  # deterministic by seed


def test_collate_pads_and_keeps_metadata():
    rows = [{"id": "a", "task_id": "t", "task_type": "x", "input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"id": "b", "task_id": "u", "task_type": "y", "input_ids": [5], "labels": [5]}]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["id"] == ["a", "b"]


def test_embedded_tokenizer_encodes_an_action_argument_like_the_observation_word(tokenizer):
    """``click[white]`` ends in the same token as `` white`` in ``color: white``, so copying is an identity map;
    the decoded reply still parses back to the env's action."""
    from prism_lit.envs.protocol import AgentProtocol

    word = tokenizer("color: red soap")["input_ids"][-2:]
    action = tokenizer("Action: click[red soap]")["input_ids"]
    assert action[-3:-1] == word
    decoded = tokenizer.decode(action)
    assert AgentProtocol(env="webshop").parse_action(decoded) == "click[red soap]"
    # idempotent: re-encoding the decoded reply (as a rollout's history does) gives the same tokens
    assert tokenizer(decoded)["input_ids"] == action
