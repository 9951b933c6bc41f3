"""The ``prism-lit`` command.

``fit``, ``validate``, ``test`` and ``predict`` are a LightningCLI in subclass mode: the model and the data are
chosen by ``class_path`` in YAML, so a user's subclass is one config line away. Further commands
(``generate``, ``pipeline``, ``compare``, ``table``) are plain functions whose typed signatures jsonargparse reads.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("prism_lit.commands:generate", "Generate tasks and expert trajectories for an env (JSONL)."),
    "import": ("prism_lit.commands:import_corpus", "Import AgentGym/ETO corpora with env task ids RL can replay."),
    "pipeline": ("prism_lit.pipeline.run:pipeline", "Run the whole PRISM pipeline from one config (resumable)."),
    "compare": ("prism_lit.pipeline.compare:compare", "Run several pipeline configs over seeds; write the table."),
    "table": ("prism_lit.pipeline.compare:table", "Rebuild a comparison's table from the run dirs it holds."),
    "memory": ("prism_lit.memory:main", "Peak memory per GPU of each stage of a config; exit 1 if one cannot fit."),
}

DESCRIPTION = "prism_lit: PRISM hybrid SFT→RL training of LLM agents on Lightning.\n\nOther commands:\n" + "\n".join(
    f"  {name:<10} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()
)


def _trainer_defaults() -> dict[str, Any]:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "prism_lit"},
        },
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        ],
    }


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    class PrismCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # defaults, not fixed callbacks: a config can replace any of them
            parser.set_defaults({f"trainer.{k}": v for k, v in _trainer_defaults().items()})

        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)
            # LightningCLI loads --ckpt_path right after parsing (for its hyper-parameters): check it first
            subcommand = self.config.get("subcommand")
            if subcommand:
                _check_ckpt_path(self.config[subcommand].get("ckpt_path"))

        def before_instantiate_classes(self) -> None:
            # `enable_progress_bar: false` must win over the default RichProgressBar rather than be an error
            config = self.config[self.subcommand] if self.subcommand else self.config
            if config.trainer.get("enable_progress_bar") is False and config.trainer.get("callbacks"):
                config.trainer.callbacks = [
                    c for c in config.trainer.callbacks if "ProgressBar" not in str(c.get("class_path", ""))
                ]

    return PrismCLI


def _check_ckpt_path(ckpt_path: str | None) -> None:
    """A damaged ``--ckpt_path`` is an error naming it and the way to discard it, before any model is built."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or str(ckpt_path).startswith("registry"):
        return
    from prism_lit.io import check_checkpoint

    check_checkpoint(ckpt_path, after_discard="then run the command again without --ckpt_path to start from "
                                              "scratch, or pass another checkpoint")


def _cli_kwargs() -> dict[str, Any]:
    return {
        "model_class": None,
        "datamodule_class": None,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {"description": DESCRIPTION, "formatter_class": _raw_formatter(), "exit_on_error": False},
    }


def _lightning_cli(args: list[str] | None = None):
    return _cli_class()(**_cli_kwargs(), args=args)


def load_fit_config(path: str, instantiate: bool = True):
    """Parse (and by default instantiate) a ``prism-lit fit`` config without running it; used by the config tests.

    Returns the LightningCLI object (``.config``, and ``.model``/``.datamodule``/``.trainer`` when instantiated).
    """
    base = _cli_class()

    class ParseOnly(base):
        def instantiate_classes(self) -> None:
            if instantiate:
                super().instantiate_classes()

    return ParseOnly(**_cli_kwargs(), run=False, args=["--config", path])


def _raw_formatter():
    import argparse

    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the description's line breaks (the list of other commands)."""

    return HelpFormatter


def _load(target: str) -> Callable:
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DEBUG_FLAG = "--debug"
DEBUG_ENV = "PRISM_LIT_DEBUG"


def _pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` is ours, not LightningCLI's or jsonargparse's: take it out before they parse argv."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return len(rest) != len(argv) or env, rest


def _named_yaml_files(argv: list[str]):
    """The values of ``--config`` / ``-c`` and of every option whose value is a ``.yaml`` / ``.yml`` path."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        key, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if key in ("--config", "-c") or value.endswith((".yaml", ".yml")):
            yield value


def _check_yaml_files(argv: list[str]) -> None:
    """Parse every YAML file the command line names (``--config X``, ``--sft X.yaml``) and the ``.yaml`` files they
    name in turn, so a malformed one is reported with its path, line and column; jsonargparse says only
    ``"<unicode string>", line 2``."""
    import yaml

    from prism_lit.errors import UsageError

    pending = list(_named_yaml_files(argv))
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen or not os.path.isfile(path):
            continue  # a missing file is the parser's error, with its name
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except UnicodeDecodeError as err:
            raise UsageError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8.") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err)
            raise UsageError(f"{path}{where}: malformed YAML ({problem}).") from None
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str) and item.endswith((".yaml", ".yml")):
                pending.append(os.path.join(os.path.dirname(path), item))


def _run(argv: list[str], from_shell: bool) -> None:
    if argv and argv[0] in EXTRA_COMMANDS:
        from jsonargparse import CLI

        target, help_ = EXTRA_COMMANDS[argv[0]]
        command = _load(target)
        if getattr(command, "parses_own_arguments", False):  # e.g. `memory --config X`: X is its input, not its args
            command(argv[1:])
            return
        _check_yaml_files(argv)
        CLI(command, args=argv[1:], prog=f"prism-lit {argv[0]}", description=help_, exit_on_error=False)
        return
    _check_yaml_files(argv)
    if from_shell:
        sys.argv[1:] = argv  # without --debug; LightningCLI reads sys.argv itself
    _lightning_cli(None if from_shell else argv)


def main(argv: list[str] | None = None) -> None:
    """The ``prism-lit`` entry point. Bad input ends in one paragraph on stderr and exit status 1 (2 for a
    command line jsonargparse rejects, 130 for Ctrl-C, 143 for SIGTERM); ``--debug`` or ``PRISM_LIT_DEBUG=1`` adds the traceback."""
    from_shell = argv is None
    debug, argv = _pop_debug(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = argv[0] if argv and argv[0] in (*LIGHTNING_COMMANDS, *EXTRA_COMMANDS) else None
    from prism_lit.errors import Terminated, report_interrupt, stop_on_sigterm

    previous = stop_on_sigterm()
    try:
        _run(argv, from_shell)
    except (KeyboardInterrupt, Terminated) as stop:
        sys.exit(report_interrupt(command, terminated=isinstance(stop, Terminated)))
    except Exception as err:
        from jsonargparse import ArgumentError

        from prism_lit.errors import is_user_error, report_error, report_usage_error

        if isinstance(err, ArgumentError):
            sys.exit(report_usage_error(err, command, debug, tuple(EXTRA_COMMANDS)))
        if not is_user_error(err):
            raise  # a bug: the whole traceback, as Python prints it
        sys.exit(report_error(err, command, argv, debug))
    finally:
        if previous is not None:  # main() called from Python (a notebook, a test) leaves the caller's handler
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
