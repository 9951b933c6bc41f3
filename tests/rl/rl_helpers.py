"""Helpers shared by the RL tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

from prism_lit.envs.protocol import AgentProtocol


def guess_word_protocol(**overrides) -> AgentProtocol:
    kwargs = {"env": "guess_word", "reply_format": "bare", "system_prompt": "Guess the word .", "show_admissible": False}
    kwargs.update(overrides)
    return AgentProtocol(**kwargs)
