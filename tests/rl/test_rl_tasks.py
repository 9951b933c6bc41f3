"""RL task data: sharding without duplicates or losses, resumable stream, partitions, fixed panels."""


import pytest

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.rl.tasks import EvalPanel, RLTaskDataModule, TaskStream, panel_tasks, shard_batches


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 17, 31])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 4, 16])
def test_every_task_once_per_epoch_and_equal_nonempty_batch_counts(n, world, batch):
    order = [f"t{i}" for i in range(n)]
    if n < world:
        with pytest.raises(ValueError, match="at least one task per rank"):
            shard_batches(order, batch, 0, world)
        return
    shards = [shard_batches(order, batch, r, world) for r in range(world)]
    seen = [t for shard in shards for b in shard for t in b]
    assert sorted(seen) == sorted(order)  # no duplicates, no losses
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank (DDP would hang otherwise)
    assert all(len(b) >= 1 for s in shards for b in s)
    assert all(len(b) <= batch + 1 for s in shards for b in s)


def test_stream_reshuffles_per_epoch_and_resumes_mid_epoch():
    tasks = [f"t{i}" for i in range(7)]
    stream = TaskStream(tasks, batch_size=3, seed=5)
    assert len(stream) == 3
    epoch0 = list(stream)
    epoch1 = list(stream)
    assert [b["epoch"] for b in epoch0] == [0, 0, 0] and [b["epoch"] for b in epoch1] == [1, 1, 1]
    assert sorted(t for b in epoch0 for t in b["task_ids"]) == sorted(tasks)
    assert [b["task_ids"] for b in epoch0] != [b["task_ids"] for b in epoch1]
    # stop after one batch of epoch 1, save, resume in a new stream
    stream = TaskStream(tasks, batch_size=3, seed=5)
    list(stream)
    it = iter(stream)
    next(it)
    state = stream.state_dict()
    resumed = TaskStream(tasks, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert list(resumed) == epoch1[1:]
    with pytest.raises(ValueError, match="same task list"):
        TaskStream(tasks[:5], batch_size=3).load_state_dict(state)


def test_seeds_are_shared_across_a_rerun_and_differ_per_task():
    a = next(iter(TaskStream(["x", "y", "z"], batch_size=3, seed=1)))
    b = next(iter(TaskStream(["x", "y", "z"], batch_size=3, seed=1)))
    assert a == b and len(set(a["seeds"])) == 3


def _partition(path, rl_tasks, sft_tasks):
    from prism_lit.probe.partition import Partition, save_partition

    rl_ids = [f"traj-{t}" for t in rl_tasks]
    sft_ids = [f"traj-{t}" for t in sft_tasks]
    task_of = {f"traj-{t}": t for t in [*rl_tasks, *sft_tasks]}
    save_partition(path, Partition(router="gini", score="gini", threshold=0.5, rl_fraction=0.5, sft_ids=sft_ids,
                                   rl_ids=rl_ids, task_of=task_of, task_type_of={k: "fruit" for k in task_of}))


def test_datamodule_lists_env_tasks_and_restricts_to_the_partition(tmp_path):
    dm = RLTaskDataModule(env_id=GUESS_WORD_ID, tasks_per_batch=2)
    assert dm.resolve_train_tasks() == [f"guess_word/train/{i}" for i in range(8)]
    path = tmp_path / "partition.json"
    _partition(path, ["guess_word/train/1", "guess_word/train/4"], ["guess_word/train/0"])
    rl = RLTaskDataModule(env_id=GUESS_WORD_ID, partition_path=str(path), which="rl")
    assert rl.resolve_train_tasks() == ["guess_word/train/1", "guess_word/train/4"]
    sft = RLTaskDataModule(env_id=GUESS_WORD_ID, partition_path=str(path), which="sft")
    assert sft.resolve_train_tasks() == ["guess_word/train/0"]
    both = RLTaskDataModule(env_id=GUESS_WORD_ID, partition_path=str(path), which="all")
    assert len(both.resolve_train_tasks()) == 3
    _partition(path, [], ["guess_word/train/0"])
    with pytest.raises(ValueError, match="partition.json.*rl_ids"):
        RLTaskDataModule(env_id=GUESS_WORD_ID, partition_path=str(path)).resolve_train_tasks()


def test_panels_are_fixed_and_carry_their_env_kwargs():
    panel = EvalPanel(name="valid", env_kwargs={"split": "valid"}, num_tasks=5, seed=3)
    a = panel_tasks(panel, GUESS_WORD_ID, {})
    assert a == panel_tasks(panel, GUESS_WORD_ID, {}) and len(a) == 5
    assert all(t.startswith("guess_word/valid/") for t, _ in a)
    dm = RLTaskDataModule(env_id=GUESS_WORD_ID, eval_panels=[panel, {"name": "train", "num_tasks": 3}],
                          eval_batch_size=2)
    batches = list(dm.val_dataloader())
    assert [b["panel"] for b in batches] == ["valid", "valid", "valid", "train", "train"]
    assert batches[0]["env_kwargs"] == {"split": "valid"}
    assert [t for b in batches[:3] for t in b["task_ids"]] == [t for t, _ in a]
    assert dm.eval_panel_names == ["valid", "train"]


def test_which_is_checked():
    with pytest.raises(ValueError, match="which"):
        RLTaskDataModule(env_id=GUESS_WORD_ID, which="both")
