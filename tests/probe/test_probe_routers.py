"""Each router's split is what its definition says; partition and probe files reload; bad files are named."""

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_lit.probe import (
    AllRLRouter,
    AllSFTRouter,
    InverseRouter,
    MagnitudeRouter,
    PartitionFormatError,
    PrismRouter,
    ProbeRecord,
    RandomRouter,
    VerifiedRewardRouter,
    load_partition,
    read_probe_records,
    save_partition,
    write_probe_records,
)


def record(i, gini=0.0, kurtosis=3.0, cv=1.0, l2=1.0, task=None, loss=1.0):
    return ProbeRecord(
        id=f"t{i:03d}",
        task_id=task or f"task/{i % 4}",
        task_type=f"type{i % 2}",
        norms=[1.0, 2.0],
        gini=gini,
        kurtosis=kurtosis,
        cv=cv,
        l2=l2,
        loss=loss,
        n_tokens=7,
    )


def test_prism_median_split_even_and_odd():
    recs = [record(i, gini=g) for i, g in enumerate([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])]
    p = PrismRouter().route(recs)
    assert p.threshold == pytest.approx(0.4)  # mean of the middle scores 0.3 and 0.5
    assert p.rl_ids == ["t000", "t002", "t004"] and p.sft_ids == ["t001", "t003", "t005"]
    assert (p.router, p.score, p.rl_fraction) == ("prism", "gini", 0.5)
    odd = PrismRouter().route(recs[:5])  # scores 0.5 0.1 0.9 0.3 0.7: median 0.5 stays in SFT
    assert odd.threshold == 0.5 and odd.rl_ids == ["t002", "t004"]


def test_prism_other_scores_and_fraction():
    recs = [record(i, gini=0.0, kurtosis=float(i), cv=float(10 - i)) for i in range(10)]
    assert PrismRouter("kurtosis").route(recs).rl_ids == [f"t{i:03d}" for i in range(5, 10)]
    assert PrismRouter("cv").route(recs).rl_ids == [f"t{i:03d}" for i in range(5)]
    p = PrismRouter("kurtosis", rl_fraction=0.3).route(recs)
    assert p.rl_ids == ["t007", "t008", "t009"] and p.threshold == pytest.approx(6.3)
    assert PrismRouter("kurtosis", rl_fraction=0.0).route(recs).rl_ids == []
    assert len(PrismRouter("kurtosis", rl_fraction=1.0).route(recs).rl_ids) == 10
    with pytest.raises(ValueError, match="score"):
        PrismRouter("l2")
    with pytest.raises(ValueError, match="rl_fraction"):
        PrismRouter(rl_fraction=1.5)


def test_ties_at_threshold_go_to_sft():
    recs = [record(i, gini=g) for i, g in enumerate([0.2, 0.5, 0.5, 0.5, 0.5, 0.9])]
    p = PrismRouter().route(recs)
    assert p.threshold == 0.5 and p.rl_ids == ["t005"]


def test_non_finite_scores_go_to_sft_with_warning():
    recs = [record(i, kurtosis=k) for i, k in enumerate([1.0, float("nan"), 3.0, 5.0, 7.0])]
    with pytest.warns(UserWarning, match="non-finite"):
        p = PrismRouter("kurtosis").route(recs)
    assert "t001" in p.sft_ids and p.threshold == 4.0 and p.rl_ids == ["t003", "t004"]


def test_inverse_is_the_mirror_of_prism():
    recs = [record(i, gini=g) for i, g in enumerate([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])]
    p = InverseRouter().route(recs)
    assert (
        p.rl_ids == ["t001", "t003", "t005"] and p.threshold == pytest.approx(0.4) and p.router == "inverse"
    )
    assert all(r.gini < p.threshold for r in recs if r.id in p.rl_ids)


def test_magnitude_routes_top_l2():
    recs = [record(i, l2=float(i * i)) for i in range(8)]
    p = MagnitudeRouter().route(recs)
    assert p.rl_ids == ["t004", "t005", "t006", "t007"] and p.score == "l2"


def test_random_is_seeded_exact_size_and_order_free():
    recs = [record(i) for i in range(21)]
    a = RandomRouter(rl_fraction=0.5, seed=3).route(recs)
    b = RandomRouter(rl_fraction=0.5, seed=3).route(list(reversed(recs)))
    c = RandomRouter(rl_fraction=0.5, seed=4).route(recs)
    assert a.rl_ids == b.rl_ids and len(a.rl_ids) == 11 and a.rl_ids != c.rl_ids
    assert len(RandomRouter(rl_fraction=0.3).route(recs).rl_ids) == 6


def test_all_sft_all_rl_and_task_sets():
    recs = [record(i) for i in range(6)]
    sft, rl = AllSFTRouter().route(recs), AllRLRouter().route(recs)
    assert sft.rl_ids == [] and len(sft.sft_ids) == 6 and rl.sft_ids == [] and len(rl.rl_ids) == 6
    assert rl.rl_task_ids == ["task/0", "task/1", "task/2", "task/3"] and sft.rl_task_ids == []
    assert sft.sft_task_ids == rl.rl_task_ids


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        PrismRouter().route([record(1), record(1)])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.sampled_from([0.1, 0.3, 0.5, 0.7]))
def test_prism_split_property(scores, fraction):
    recs = [record(i, gini=s) for i, s in enumerate(scores)]
    p = PrismRouter(rl_fraction=fraction).route(recs)
    rl = set(p.rl_ids)
    assert rl | set(p.sft_ids) == {r.id for r in recs} and not rl & set(p.sft_ids)
    assert all((r.gini > p.threshold) == (r.id in rl) for r in recs)
    expected = math.ceil(round(fraction * (len(recs) - 1), 9))  # values above the (1 − f) quantile
    assert len(rl) <= expected  # ties only ever shrink D_RL
    if len(set(scores)) == len(scores):
        assert len(rl) == expected


def test_partition_roundtrip_and_atomic_file(tmp_path):
    recs = [record(i, gini=random.Random(i).random()) for i in range(9)]
    p = PrismRouter().route(recs)
    path = tmp_path / "run" / "partition.json"
    save_partition(path, p)
    q = load_partition(path)
    assert q == p and q.rl_task_ids == p.rl_task_ids
    assert json.loads(path.read_text())["format"] == "prism_lit.partition/1"
    assert [f.name for f in path.parent.iterdir()] == ["partition.json"]  # no temp file left behind
    save_partition(path, PrismRouter(rl_fraction=1.0).route(recs))
    everything = load_partition(path)
    assert everything.threshold == -math.inf and len(everything.rl_ids) == 9


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("rl_ids"), "rl_ids"),
        (lambda d: d.update(sft_ids="t000"), "sft_ids"),
        (lambda d: d["task_of"].pop(d["sft_ids"][0]), "task_of"),
        (lambda d: d.update(rl_ids=d["rl_ids"] + d["sft_ids"][:1]), "rl_ids"),
        (lambda d: d.update(threshold="high"), "threshold"),
        (lambda d: d.update(rl_fraction=2.0), "rl_fraction"),
    ],
)
def test_bad_partition_file_names_file_and_field(tmp_path, mutate, field):
    path = tmp_path / "partition.json"
    data = PrismRouter().route([record(i, gini=i / 10) for i in range(6)]).to_json()
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(PartitionFormatError) as err:
        load_partition(path)
    assert str(path) in str(err.value) and f"field '{field}'" in str(err.value)


def test_unreadable_partition_file(tmp_path):
    path = tmp_path / "partition.json"
    path.write_text("{not json")
    with pytest.raises(PartitionFormatError, match="not valid JSON"):
        load_partition(path)
    with pytest.raises(PartitionFormatError, match="no such file"):
        load_partition(tmp_path / "missing.json")


def test_probe_records_roundtrip_with_nan(tmp_path):
    recs = [record(2, kurtosis=float("nan"), loss=float("nan")), record(1, gini=0.25)]
    path = tmp_path / "probe.jsonl"
    write_probe_records(path, recs)
    back = read_probe_records(path)
    assert [r.id for r in back] == ["t001", "t002"]
    assert back[0] == recs[1] and math.isnan(back[1].kurtosis) and math.isnan(back[1].loss)
    assert "NaN" not in path.read_text()  # strict JSON: null, not NaN
    path.write_text(path.read_text().replace('"gini": 0.25', '"gini": "x"'))
    with pytest.raises(ValueError, match=r"line 1, field 'gini'"):
        read_probe_records(path)


@pytest.mark.parametrize(
    "router, expected",
    [
        (
            {"class_path": "prism_lit.probe.PrismRouter", "init_args": {"score": "cv", "rl_fraction": 0.3}},
            PrismRouter,
        ),
        ({"class_path": "prism_lit.probe.InverseRouter"}, InverseRouter),
        ({"class_path": "prism_lit.probe.MagnitudeRouter"}, MagnitudeRouter),
        ({"class_path": "prism_lit.probe.RandomRouter", "init_args": {"seed": 7}}, RandomRouter),
        ({"class_path": "prism_lit.probe.AllSFTRouter"}, AllSFTRouter),
        ({"class_path": "prism_lit.probe.AllRLRouter"}, AllRLRouter),
    ],
)
def test_router_is_chosen_by_class_path_in_config(router, expected):
    from jsonargparse import ArgumentParser

    from prism_lit.probe import GradientConcentrationProbe

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GradientConcentrationProbe, "probe")
    probe = parser.instantiate_classes(parser.parse_object({"probe": {"router": router}})).probe
    assert type(probe.router) is expected
    assert probe.router.route([record(i, gini=i / 10) for i in range(4)]).router == expected.name
    bad = {"class_path": "prism_lit.probe.PrismRouter", "init_args": {"score": "l2"}}
    with pytest.raises(Exception, match="score"):
        parser.parse_object({"probe": {"router": bad}})


def test_verified_reward_router_keeps_code_checked_tasks_for_rl():
    """Precision-first routing on the real instruction-following env: a task whose reward a judge pays (a soft
    constraint) is dropped, or sent to SFT; a task every part of whose reward code checks goes to RL."""
    import gymnasium as gym

    import prism_lit.envs  # noqa: F401  (registers the ids)

    kwargs = {"split": "train", "n_tasks": 60, "soft_fraction": 0.5}
    env = gym.make("prism_lit/InstructionFollowing-v0", **kwargs)
    tasks = [f"ifgen/train/{i}" for i in range(12)]
    soft = {t for t in tasks if env.reset(options={"task_id": t})[1]["task_families"].endswith("soft")}
    assert 0 < len(soft) < len(tasks)
    records = [record(i, task=t) for i, t in enumerate(tasks)]
    records.append(record(12, task=tasks[0]))  # two trajectories of one task go the same way

    dropped = VerifiedRewardRouter(env_id="prism_lit/InstructionFollowing-v0", env_kwargs=kwargs).route(records)
    assert dropped.router == "verified_reward" and dropped.sft_ids == []
    assert {dropped.task_of[i] for i in dropped.rl_ids} == set(tasks) - soft
    assert set(dropped.task_of) == set(dropped.rl_ids)  # the dropped ones are in neither set
    to_sft = VerifiedRewardRouter("sft", env_id="prism_lit/InstructionFollowing-v0", env_kwargs=kwargs).route(records)
    assert to_sft.rl_ids == dropped.rl_ids and {to_sft.task_of[i] for i in to_sft.sft_ids} == soft
    assert to_sft.rl_fraction == pytest.approx(len(to_sft.rl_ids) / len(records))
    # with the reward paid on hard constraints only, every task is verified
    hard_pay = VerifiedRewardRouter(env_id="prism_lit/InstructionFollowing-v0", env_kwargs={**kwargs, "reward": "hard"})
    assert len(hard_pay.route(records).rl_ids) == len(records)
    # an env that says nothing about verification: every task counts as verified
    guess_ids = gym.make("prism_lit/GuessWord-v0").unwrapped.task_ids[:3]
    words = [ProbeRecord.unmeasured(f"w{i}", t, "fruit") for i, t in enumerate(guess_ids)]
    assert len(VerifiedRewardRouter(env_id="prism_lit/GuessWord-v0").route(words).rl_ids) == 3
    assert not VerifiedRewardRouter.needs_scores
    with pytest.raises(ValueError, match="drop' or 'sft"):
        VerifiedRewardRouter("keep")
    with pytest.raises(ValueError, match="no env_id"):
        VerifiedRewardRouter().route(records)
