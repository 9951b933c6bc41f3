"""The copy warm-up: it grows a real copy circuit in a freshly built embedded model, on the tasks' own words."""

import math
import random

import pytest

from prism_lit.policy.copy_warmup import copy_batch, copy_sample, task_words, train_copy
from prism_lit.policy.embedded import EmbeddedModelSpec, build_model, train_tokenizer

WORDS = ["red", "blue", "green", "socks", "shirt", "lamp", "desk", "tea", "honey", "oil", "soap", "chair"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([" ".join(WORDS) * 3, "Type this search: [SEP] Action: search[red]"], vocab_size=400)


def test_task_words_are_distinct_lowercase_words_of_three_letters_or_more_or_with_digits():
    assert task_words(["Find me RED socks, and a lamp", "i need a red desk [SEP]"]) == \
        ["and", "desk", "find", "lamp", "need", "red", "sep", "socks"]
    assert task_words(["size: xx-large, pack of 2, 16 ounce, price lower than 40.00 dollars."]) == \
        ["16", "2", "40.00", "dollars", "lower", "ounce", "pack", "price", "size", "than", "xx-large"]


def test_samples_put_the_copy_after_its_source(tokenizer):
    rng = random.Random(0)
    ids, start = copy_sample(tokenizer, WORDS, rng, "bare")
    assert ids[start - 1] == tokenizer.eos_token_id and ids[start:] == ids[: start - 1]
    ids, start = copy_sample(tokenizer, WORDS, rng, "chat")
    reply = tokenizer.decode(ids[start:], skip_special_tokens=True)
    prompt = tokenizer.decode(ids[:start], skip_special_tokens=True)
    copied = reply.split("search[")[1].split("]")[0].strip()
    assert reply.startswith("Action: search[") and prompt.rstrip().endswith(copied.split()[-1] + "\nassistant")
    with pytest.raises(ValueError, match="form must be 'bare' or 'chat'"):
        copy_sample(tokenizer, WORDS, rng, "poem")
    input_ids, mask, labels = copy_batch([copy_sample(tokenizer, WORDS, rng, "bare") for _ in range(3)],
                                         tokenizer.pad_token_id)
    assert input_ids.shape == mask.shape == labels.shape and (labels[mask == 0] == -100).all()


def test_warmup_learns_to_copy_below_the_word_writing_floor(tokenizer):
    """Without copying, the best a model can do on a random word is ln(len(WORDS)) per word token; the warm-up
    has to get well below that (it copies), on samples it has not seen."""
    import torch

    model = build_model(tokenizer, EmbeddedModelSpec(vocab_size=400))  # the embedded default's shape
    train_copy(model, tokenizer, WORDS, bare_steps=500, chat_steps=0, batch_size=16, lr=1e-3, seed=0)
    model.eval()
    rng = random.Random(123)
    input_ids, mask, labels = copy_batch([copy_sample(tokenizer, WORDS, rng, "bare") for _ in range(64)],
                                         tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item()
    assert loss < 0.5 * math.log(len(WORDS)), loss


def test_warmup_needs_words(tokenizer):
    model = build_model(tokenizer, EmbeddedModelSpec(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, num_key_value_heads=2,
                                                     intermediate_size=64))
    with pytest.raises(ValueError, match="at least 2 distinct words"):
        train_copy(model, tokenizer, ["only"], bare_steps=1, chat_steps=0)


def test_nonce_words_are_made_up_letter_strings_mixed_in_at_their_fraction(tokenizer):
    rng = random.Random(1)
    copied = []
    for _ in range(200):
        ids, start = copy_sample(tokenizer, WORDS, rng, "bare", nonce_fraction=0.5)
        copied += tokenizer.decode(ids[start:], skip_special_tokens=True).split()
    made_up = [w for w in copied if w not in WORDS]
    assert all(w.isalpha() and w.islower() and 2 <= len(w) <= 9 for w in made_up)
    assert 0.4 < len(made_up) / len(copied) < 0.6
    # no nonce fraction: the samples (and the random stream) are those of a warm-up without the option
    plain = [copy_sample(tokenizer, WORDS, random.Random(2), "chat") for _ in range(3)]
    assert plain == [copy_sample(tokenizer, WORDS, random.Random(2), "chat", nonce_fraction=0.0) for _ in range(3)]


def test_nonce_fraction_is_checked(tokenizer):
    model = build_model(tokenizer, EmbeddedModelSpec(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, num_key_value_heads=2,
                                                     intermediate_size=64))
    with pytest.raises(ValueError, match="nonce_fraction must be in"):
        train_copy(model, tokenizer, WORDS, bare_steps=1, chat_steps=0, nonce_fraction=1.5)
    train_copy(model, tokenizer, [], bare_steps=1, chat_steps=1, nonce_fraction=1.0)  # made-up words only
