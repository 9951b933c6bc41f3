"""Under torchrun every rank runs the pipeline; what the ranks share (the embedded base's initial weights and its
copy warm-up) must be built once, by rank 0, and read by the others only when whole."""

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from prism_lit.pipeline.context import built_once


def _build(out: Path, log: Path) -> Path:
    with open(log, "a") as f:
        f.write(f"rank {os.environ['RANK']} built\n")
    time.sleep(1.5)  # long enough for the other rank to look while rank 0 is still writing
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir()
    (tmp / "weights.bin").write_text("w")
    (tmp / "ready.json").write_text("{}")
    tmp.rename(out)
    return out


def _rank(rank: int, out: str, log: str, queue) -> None:
    os.environ["RANK"] = str(rank)
    path = built_once(Path(out), "ready.json", lambda: _build(Path(out), Path(log)))
    queue.put((rank, (Path(path) / "weights.bin").read_text()))


def test_rank_zero_builds_and_the_other_rank_waits_for_the_whole_directory(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    out, log = tmp_path / "init", tmp_path / "builds.log"
    waiting = ctx.Process(target=_rank, args=(1, str(out), str(log), queue))
    waiting.start()  # rank 1 first: it must wait, not build
    time.sleep(0.5)
    building = ctx.Process(target=_rank, args=(0, str(out), str(log), queue))
    building.start()
    for p in (waiting, building):
        p.join(60)
        assert p.exitcode == 0
    assert sorted(queue.get(timeout=5) for _ in range(2)) == [(0, "w"), (1, "w")]
    assert log.read_text() == "rank 0 built\n"


def test_a_finished_directory_is_reused_by_every_rank(tmp_path, monkeypatch):
    out = tmp_path / "init"
    out.mkdir()
    (out / "ready.json").write_text("{}")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert built_once(out, "ready.json", lambda: pytest.fail("rebuilt a finished directory")) == out


def test_a_waiting_rank_gives_up_with_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(TimeoutError, match=r"rank 3: waited .* for rank 0 to write .*init/ready\.json"):
        built_once(tmp_path / "init", "ready.json", lambda: pytest.fail("a rank other than 0 built"), timeout_s=0.2)
