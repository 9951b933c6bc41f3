"""``prism-lit`` with a pause point, so a test can kill it at an exact moment: ``python pausing_cli.py ARGS``.

``PRISM_LIT_TEST_PAUSE=<where>`` and ``PRISM_LIT_TEST_PAUSED=<flag file>``; ``<where>`` is one of

- ``train:<stage>:<step>``: in the stage's ``Trainer``, after optimiser step ``<step>`` (before that step's
  checkpoint is written, so the stage's ``last.ckpt`` is an earlier one);
- ``export:<stage>``: while the stage exports its model, after the files are written to the temporary folder and
  before it is renamed into place;
- ``eval:<n>``: in the eval stage, after ``<n>`` policies were evaluated.

At the pause the process writes the flag file and sleeps until it is killed. Everything else is the real CLI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

WHERE = os.environ.get("PRISM_LIT_TEST_PAUSE", "")
FLAG = os.environ.get("PRISM_LIT_TEST_PAUSED", "")


def pause() -> None:
    Path(FLAG).write_text(WHERE)
    while True:  # until SIGKILL; SIGINT (KeyboardInterrupt) and SIGTERM (Terminated) raise here, as in a step
        time.sleep(0.05)


def install() -> None:
    kind, _, rest = WHERE.partition(":")
    if kind == "train":
        import lightning as L

        stage, _, step = rest.partition(":")

        class PauseAtStep(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step == int(step):
                    pause()

        init = L.Trainer.__init__

        def patched(self, *args, **kwargs):
            root = Path(str(kwargs.get("default_root_dir", "")))
            if root.name == stage:
                kwargs["callbacks"] = [PauseAtStep(), *(kwargs.get("callbacks") or [])]
            init(self, *args, **kwargs)

        L.Trainer.__init__ = patched
    elif kind == "export":
        import prism_lit.io as io

        original = io.atomic_directory

        @contextlib.contextmanager
        def paused_directory(path):
            with original(path) as tmp:
                yield tmp
                if Path(path).name == "export" and Path(path).parent.name == rest:
                    pause()

        io.atomic_directory = paused_directory
        import prism_lit.policy.loading as loading

        loading.atomic_directory = paused_directory
    elif kind == "eval":
        import prism_lit.rl.evaluation as evaluation

        original_eval = evaluation.evaluate_policy
        calls = {"n": 0}

        def counted(*args, **kwargs):
            if calls["n"] == int(rest):
                pause()
            calls["n"] += 1
            return original_eval(*args, **kwargs)

        evaluation.evaluate_policy = counted
    elif WHERE:
        raise SystemExit(f"pausing_cli: unknown pause point {WHERE!r}")


if __name__ == "__main__":
    # A process started in the background by a non-interactive shell (a CI runner, `cmd &`) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: the Ctrl-C the tests send would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install()
    from prism_lit.cli import main

    sys.argv[0] = "prism-lit"
    main()
