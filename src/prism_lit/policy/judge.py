"""The LLM judge of the instruction-following env's soft constraints: a local causal LM answering Yes / No.

It lives here, with the model-loading code, because it needs torch and transformers; the env package
(``prism_lit.envs.instruction_following``) builds it by class name, e.g. ``judge:
{class_path: prism_lit.policy.judge.LLMJudge, init_args: {model_path: /models/judge}}`` or simply
``judge: /models/judge``, and never imports it. The prompt and the scoring rule are documented in
docs/envs/instruction_following.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prism_lit.envs.instruction_following.judge import JUDGE_PROMPT, JudgeScore

__all__ = ["LLMJudge"]


class LLMJudge:
    """A causal LM judge from a local Hugging Face model path (no download: ``local_files_only``).

    The model reads :data:`~prism_lit.envs.instruction_following.judge.JUDGE_PROMPT` (through its chat
    template when it has one, else the plain text plus ``Answer:``); the score is
    ``P(Yes) / (P(Yes) + P(No))`` over the first answer token.

    Args:
        model_path: folder with the model and tokenizer (``save_pretrained`` layout).
        device: torch device string.
        threshold: ``passed = score >= threshold``.
        max_prompt_tokens: the judge prompt keeps its last this many tokens.
        prompt_template: defaults to ``JUDGE_PROMPT`` (fields ``prompt``, ``requirement``, ``response``).
        dtype: parameter dtype (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        threshold: float = 0.5,
        max_prompt_tokens: int = 2048,
        prompt_template: str = JUDGE_PROMPT,
        dtype: str = "float32",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"llm:{model_path}"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model_path, local_files_only=True, dtype=getattr(torch, dtype)
            )
            .to(device)
            .eval()
        )
        self.device = device
        self.threshold = threshold
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_template = prompt_template
        self._yes = self._first_tokens(("Yes", " Yes", "yes"))
        self._no = self._first_tokens(("No", " No", "no"))
        if not self._yes or not self._no:
            raise ValueError(f"LLMJudge: the tokenizer of {model_path} cannot encode 'Yes'/'No'")

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for word in words:
            enc = self.tokenizer.encode(word, add_special_tokens=False)
            if enc and enc[0] not in ids and enc[0] != self.tokenizer.unk_token_id:
                ids.append(enc[0])
        return ids

    def render(self, prompt: str, response: str, requirement: str) -> str:
        """The exact text the judge model reads."""
        content = self.prompt_template.format(prompt=prompt, requirement=requirement, response=response)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content + "\nAnswer:"

    @torch.no_grad()
    def score(self, prompt: str, response: str, requirement: str) -> JudgeScore:
        text = self.render(prompt, response, requirement)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = ids[:, -self.max_prompt_tokens :].to(self.device)
        logits = self.model(input_ids=ids).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        yes = float(probs[self._yes].sum())
        no = float(probs[self._no].sum())
        value = yes / (yes + no) if yes + no > 0 else 0.0
        return JudgeScore(value, value >= self.threshold, self.name)
