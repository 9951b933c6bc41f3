"""Diagnostic: can the embedded model architecture learn to copy from its context, and how fast?

    python benchmarks/copy_task.py runs/pipeline_webshop --format bare --steps 1500
    python benchmarks/copy_task.py runs/pipeline_webshop --format chat --steps 1500

Every WebShop decision the agent gets wrong (docs/results.md §3) is a copy: a product phrase or an option value
written in the instruction has to reappear in the reply. This trains a *fresh* model of the run's embedded size
(``base.embedded`` of its pipeline_config.json, with its tokenizer) on nothing but copying 3-12 words drawn from
the WebShop instructions' own vocabulary, and reports the training loss and the greedy exact-copy rate on fresh
samples as it goes:

- ``bare``: ``w1 … wn <|im_end|> w1 … wn``, the copy right after a separator;
- ``chat``: the chat template around ``Type this search: [SEP] w1 … wn`` → ``Action: search[w1 … wn]``, the
  format of the agent's own replies (about 20 template tokens between the words and their copy).

The samples are ``prism_lit.policy.copy_warmup``'s, the pipeline's ``base.copy_warmup_steps``.

``--bare_first K`` trains K steps of ``bare`` before the ``--format`` steps (a copy warm-up; the copy rate is
always measured in ``--format``).

A loss that stays at ln(words in the pool) × (share of word tokens) is the model writing likely words, not
copies. Seeded; CPU; no files written except ``--out`` and ``--save``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path


def instruction_words(corpus: Path) -> list[str]:
    """The words (letters only, 3+ long) of every instruction in a trajectory JSONL file."""
    words: set[str] = set()
    with corpus.open() as f:
        for line in f:
            page = json.loads(line)["messages"][1]["content"]  # "WebShop [SEP] Instruction: [SEP] <task> [SEP] Search"
            task = page.split("Instruction: [SEP]")[-1].split("[SEP]")[0].lower()
            words.update(w for w in re.findall(r"[a-z]+", task) if len(w) > 2)
    return sorted(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a pipeline run directory with tasks/ and base/init/")
    parser.add_argument("--format", choices=["bare", "chat"], default="bare")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--bare_first", type=int, default=0, help="steps of bare copying before --format's")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the curve as JSON here")
    parser.add_argument("--save", type=Path, help="also save the trained model and its tokenizer to this directory")
    args = parser.parse_args()

    import torch

    from prism_lit.policy import PolicySpec, load_tokenizer
    from prism_lit.policy.copy_warmup import copy_batch, copy_sample
    from prism_lit.policy.embedded import EmbeddedModelSpec, build_model

    config_path = args.run_dir / "pipeline_config.json"
    init = args.run_dir / "base" / "init"
    corpus = args.run_dir / "tasks" / "pretrain.jsonl"
    for path in (config_path, init, corpus):
        if not path.exists():
            raise SystemExit(f"{path} not found: give a run directory whose tasks and base stages have run")
    spec = EmbeddedModelSpec(**json.loads(config_path.read_text())["base"]["embedded"])
    tokenizer = load_tokenizer(PolicySpec(path=str(init)))
    torch.manual_seed(args.seed)
    model = build_model(tokenizer, spec)
    words = instruction_words(corpus)
    rng = random.Random(args.seed)

    def sample(form: str = args.format) -> tuple[list[int], int]:
        """Token ids and where the copy starts."""
        return copy_sample(tokenizer, words, rng, form)

    def copy_rate() -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for _ in range(args.eval_samples):
                ids, start = sample()
                # the reply up to its end-of-turn token (the chat template may put more after it)
                target = ids[start:]
                if tokenizer.eos_token_id in target:
                    target = target[: target.index(tokenizer.eos_token_id) + 1]
                out = model.generate(torch.tensor([ids[:start]]), max_new_tokens=len(target),
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
                right += out[0, start:].tolist() == target
        model.train()
        return right / args.eval_samples

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    curve, started = [], time.perf_counter()
    print(f"{args.format}: {len(words)} words in the pool (a word-writing floor of ln {len(words)} = "
          f"{math.log(len(words)):.2f} per word token)")
    print(f"{'step':>6} {'loss':>7} {'copied':>7} {'s':>6}")
    model.train()
    for step in range(args.bare_first + args.steps):
        form = "bare" if step < args.bare_first else args.format
        input_ids, mask, labels = copy_batch([sample(form) for _ in range(args.batch_size)], tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.bare_first + args.steps:
            point = {"step": step + 1, "loss": round(loss.item(), 3), "copied": copy_rate(),
                     "seconds": round(time.perf_counter() - started, 1)}
            curve.append(point)
            print(f"{point['step']:>6} {point['loss']:>7.3f} {point['copied']:>7.2f} {point['seconds']:>6.0f}", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    if args.out:
        args.out.write_text(json.dumps({"format": args.format, "bare_first": args.bare_first, "words": len(words),
                                        "curve": curve}, indent=2) + "\n")


if __name__ == "__main__":
    main()
