"""Statistics a reader can trust: sample spread, paired bootstrap intervals over goals and seeds, and the compare
table built from hand-made run dirs whose answers are known."""

import json
import math
import random

import numpy as np
import pytest

from prism_lit.pipeline.stats import bootstrap_mean, crossed_bootstrap_mean, mean_std, paired_difference


def _outcomes(rates, n_goals=200, seed=0):
    """``{run seed: {goal: won}}`` with a Bernoulli(rate) outcome per goal."""
    rng = random.Random(seed)
    return {s: {f"g{g}": float(rng.random() < rate) for g in range(n_goals)} for s, rate in enumerate(rates)}


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([0.2, 0.4])["std"] == pytest.approx(math.sqrt(0.02))  # n − 1: 0.1414, not 0.1
    assert mean_std([1.0, 2.0, 3.0, None, float("nan")]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}  # one value has no spread
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_identical_methods_give_an_interval_at_zero():
    a = _outcomes([0.3, 0.3, 0.3])
    d = paired_difference(a, a)
    assert d["mean"] == 0.0 and d["ci"] == [0.0, 0.0]
    assert (d["n_seeds"], d["n_goals"], d["n_pairs"]) == (3, 200, 600)


def test_a_constant_shift_gives_an_interval_at_the_shift():
    a = _outcomes([0.3, 0.5, 0.1])
    b = {s: {g: v - 0.10 for g, v in cells.items()} for s, cells in a.items()}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.10)
    assert d["ci"] == pytest.approx([0.10, 0.10], abs=1e-9)


def test_two_independent_methods_of_equal_rate_are_not_resolved_and_a_large_gap_is():
    same = paired_difference(_outcomes([0.3] * 3, seed=1), _outcomes([0.3] * 3, seed=2))
    assert same["ci"][0] < 0.0 < same["ci"][1]
    gap = paired_difference(_outcomes([0.6] * 3, seed=1), _outcomes([0.2] * 3, seed=2))
    assert 0.0 < gap["ci"][0] < gap["mean"] < gap["ci"][1]


def test_goal_bootstrap_width_matches_the_normal_approximation():
    """One seed: the crossed bootstrap is the ordinary bootstrap over goals, whose 95 % interval of a mean of
    n differences is about ± 1.96 sd / √n."""
    a, b = _outcomes([0.5], n_goals=400, seed=3), _outcomes([0.3], n_goals=400, seed=4)
    d = paired_difference(a, b)
    diffs = np.array([a[0][g] - b[0][g] for g in a[0]])
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert (d["ci"][1] - d["ci"][0]) / 2 == pytest.approx(half, rel=0.1)
    assert d["mean"] == pytest.approx(diffs.mean())


def test_seed_to_seed_variation_enters_the_interval():
    """Seed 0 gains nothing, seed 1 gains 20 points on every goal: a goal-only bootstrap would say
    [+10, +10]; resampling seeds spreads it over [0, +20]."""
    a = {0: {g: 0.5 for g in range(50)}, 1: {g: 0.7 for g in range(50)}}
    b = {0: {g: 0.5 for g in range(50)}, 1: {g: 0.5 for g in range(50)}}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.10)
    assert d["ci"] == pytest.approx([0.0, 0.20])


def test_pairs_only_cells_both_sides_have_and_the_bootstrap_repeats():
    a = {0: {"x": 1.0, "y": 1.0, "z": 0.0}, 1: {"x": 1.0}, 2: {"x": 0.0}}
    b = {0: {"x": 0.0, "y": 1.0}, 1: {"x": 0.0}}
    d = paired_difference(a, b, n_boot=2000, seed=7)
    assert (d["n_seeds"], d["n_goals"], d["n_pairs"]) == (2, 2, 3) and d["mean"] == pytest.approx(2 / 3)
    assert d == paired_difference(a, b, n_boot=2000, seed=7)
    assert paired_difference(a, {5: {"x": 1.0}})["mean"] is None


def test_crossed_bootstrap_skips_missing_cells_and_rejects_other_shapes():
    m = np.array([[1.0, np.nan], [np.nan, 0.0]])
    r = crossed_bootstrap_mean(m, n_boot=500)
    assert r["mean"] == 0.5 and 0.0 <= r["ci"][0] <= r["ci"][1] <= 1.0 and r["n_pairs"] == 2
    with pytest.raises(ValueError, match="seeds × goals"):
        crossed_bootstrap_mean(np.zeros(3))
    level = bootstrap_mean({0: {"a": 1.0, "b": 0.0}, 1: {}})
    assert level["mean"] == 0.5 and level["n_seeds"] == 1


# ------------------------------------------------------------------------------ the compare table from run dirs
def _run(out, method, seed, won, policy="final", score=None):
    """A run dir as the pipeline leaves it: report.json and eval/episodes.jsonl (``won``: goal → 0/1)."""
    run = out / method / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    rate = sum(won.values()) / len(won)
    (run / "report.json").write_text(json.dumps({
        "method": method, "seed": seed, "stages": {"sft": {"seconds": 1.0, "info": {"trained": True}}},
        "eval": {"webshop": {"test": {"success_rate": rate, "score": rate}}},
        "compute_seconds": {"probe": 0.0, "sft": 1.0, "rl": 0.0, "total": 1.0}}))
    lines = [json.dumps({"policy": policy, "split": "test", "task_id": g, "env_seed": i, "task_type": "t",
                         "won": bool(w), "score": score if score is not None else float(w), "steps": 3,
                         "invalid": 0})
             for i, (g, w) in enumerate(sorted(won.items()))]
    (run / "eval" / "episodes.jsonl").write_text("".join(line + "\n" for line in lines))


def test_summarize_reports_paired_differences_and_names_a_missing_baseline(tmp_path):
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    goals = [f"webshop/test/{i}" for i in range(40)]
    for seed in (0, 1, 2):
        rng = random.Random(seed)
        random_won = {g: rng.random() < 0.3 for g in goals}
        _run(tmp_path, "random", seed, random_won)
        _run(tmp_path, "prism-gini", seed, dict(random_won))  # the same outcome on every goal and seed
        _run(tmp_path, "sft-100", seed, {g: True for g in goals})  # wins everything: prism − sft-100 < 0
    table = summarize(tmp_path, "random", bootstrap_samples=2000)
    rows = {(r["a"], r["b"]): r for r in table["paired"]}
    same = rows[("prism-gini", "random")]["success_rate"]
    assert same["mean"] == 0.0 and same["ci"] == [0.0, 0.0] and (same["n_seeds"], same["n_goals"]) == (3, 40)
    worse = rows[("prism-gini", "sft-100")]["success_rate"]
    prism_rate = table["methods"]["prism-gini"]["metrics"]["test/success_rate"]["mean"]
    assert worse["ci"][1] < 0.0 and worse["mean"] == pytest.approx(prism_rate - 1.0)
    assert "missing" in rows[("prism-gini", "sft-then-rl")]
    md = comparison_markdown(table)
    assert "## Paired differences" in md and "| prism-gini − random | test | 3 | 40 | +0.0 [+0.0, +0.0] |" in md
    assert "sample standard deviation" in md and "prism-gini − sft-then-rl: no per-episode outcomes" in md
    # the table repeats exactly (seeded bootstrap)
    assert summarize(tmp_path, "random", bootstrap_samples=2000)["paired"] == table["paired"]


def test_summarize_pairs_named_policies_within_a_method(tmp_path):
    from prism_lit.pipeline.compare import summarize

    goals = [f"g{i:02d}" for i in range(30)]  # sorted order = index order
    for seed in (0, 1):
        _run(tmp_path, "rl-100", seed, {g: i % 2 == 0 for i, g in enumerate(goals)})
        # the same runs also evaluated the base: 20 points lower on every seed (6 goals of 30 fewer)
        extra = [json.dumps({"policy": "base", "split": "test", "task_id": g, "env_seed": i, "task_type": "t",
                             "won": i % 2 == 0 and i >= 12, "score": 0.0, "steps": 1, "invalid": 0})
                 for i, g in enumerate(sorted(goals))]
        with open(tmp_path / "rl-100" / f"seed{seed}" / "eval" / "episodes.jsonl", "a") as fh:
            fh.write("".join(line + "\n" for line in extra))
    table = summarize(tmp_path, "rl-100", paired=[["rl-100", "rl-100:base"]], bootstrap_samples=2000)
    (row,) = table["paired"]
    assert row["success_rate"]["mean"] == pytest.approx(0.2) and row["success_rate"]["ci"][0] > 0.0


def test_bad_pairs_are_rejected_before_anything_runs(tmp_path):
    from prism_lit.pipeline.compare import compare

    with pytest.raises(ValueError, match=r"paired: each entry is \[A, B\]"):
        compare(["x.yaml"], out_dir=str(tmp_path / "cmp"), paired=[["prism-gini"]])
    assert not (tmp_path / "cmp").exists()


def test_a_single_seed_row_shows_no_spread(tmp_path):
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    _run(tmp_path, "base", 0, {"g0": True, "g1": False})
    md = comparison_markdown(summarize(tmp_path, "base", paired=[], bootstrap_samples=100))
    assert "| base | 1 | 50.0 | 0 |" in md and "Paired" not in md


def test_a_run_without_a_report_is_named_not_silently_left_out(tmp_path):
    """A run still training (or killed) has a run dir but no report: the table counts the finished runs and names
    the other, so one seed fewer is never read as the whole comparison."""
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    _run(tmp_path, "base", 0, {"g0": True, "g1": False})
    (tmp_path / "base" / "seed1" / "sft").mkdir(parents=True)  # as a killed run leaves it
    table = summarize(tmp_path, "base", paired=[], bootstrap_samples=100)
    assert len(table["methods"]["base"]["runs"]) == 1
    assert table["unfinished"] == [str(tmp_path / "base" / "seed1")]
    md = comparison_markdown(table)
    assert "Not in this table: 1 run dir(s) without a report" in md and f"`{tmp_path / 'base' / 'seed1'}`" in md
    _run(tmp_path / "done", "base", 0, {"g0": True, "g1": False})
    done = summarize(tmp_path / "done", "base", paired=[], bootstrap_samples=100)
    assert done["unfinished"] == [] and "Not in this table" not in comparison_markdown(done)


def test_a_score_that_only_repeats_success_gets_no_column(tmp_path):
    """ALFWorld's score is its win: the tables show success alone and say why; WebShop's reward keeps its column."""
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    _run(tmp_path / "alf", "base", 0, {"g0": True, "g1": False})
    table = summarize(tmp_path / "alf", "base", paired=[["base", "base"]], bootstrap_samples=100)
    md = comparison_markdown(table)
    assert table["score_is_success"] and "test/score" not in table["methods"]["base"]["metrics"]
    assert "score (" not in md and "no score column is shown" in md
    assert "| base | test | 1 | 2 | 50.0 [0.0, 100.0] |" in md

    _run(tmp_path / "shop", "base", 0, {"g0": True, "g1": False}, score=0.5)  # partial credit on the lost goal
    table = summarize(tmp_path / "shop", "base", paired=[["base", "base"]], bootstrap_samples=100)
    md = comparison_markdown(table)
    assert not table["score_is_success"] and "score (×100)" in md and "score (points)" in md
    assert "no score column" not in md


def test_conflict_variant_applies_its_overrides_to_every_baseline(monkeypatch):
    """Gate 3's compare config: every baseline parses with the overrides (the main job's base, the contradicting
    expert rule, a 200-goal panel), and its pairs are well formed and name methods of the table."""
    from pathlib import Path

    import yaml

    from prism_lit.pipeline.compare import _check_pairs, _parse_pipeline_config

    root = Path(__file__).parents[2]
    monkeypatch.chdir(root)
    config = yaml.safe_load((root / "configs" / "conflict" / "compare_webshop_conflict.yaml").read_text())
    methods = set()
    for path in config["configs"]:
        kwargs = _parse_pipeline_config(path, config["overrides"])
        assert kwargs["base"].path == "runs/pipeline_webshop/base/model"
        assert kwargs["env"].expert_kwargs == {"query": "instruction", "product": "first_match"}
        assert kwargs["env"].eval_splits == {"test": 200}
        assert kwargs["base"].familiar_task_types == ["beauty", "fashion", "food"]
        methods.add(kwargs["method"])
    _check_pairs(config["paired"])
    assert {name.split(":")[0] for pair in config["paired"] for name in pair} <= methods
    # the single-run config builds the same corpus rule on the same base
    single = _parse_pipeline_config("configs/conflict/pipeline_webshop_conflict.yaml", {})
    assert single["env"].expert_kwargs == kwargs["env"].expert_kwargs and single["base"].path == kwargs["base"].path
    main = _parse_pipeline_config("configs/pipeline_webshop_embedded.yaml", {})
    assert main["env"].expert_kwargs["query"] == "short"  # the base's rule, which the variant contradicts
    assert {k: v for k, v in vars(single["env"]).items() if k not in ("expert_kwargs", "eval_splits")} == \
        {k: v for k, v in vars(main["env"]).items() if k not in ("expert_kwargs", "eval_splits")}


def test_levels_give_every_policy_an_interval_over_seeds_and_goals(tmp_path):
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    for seed in (0, 1):
        _run(tmp_path, "m", seed, {f"g{i:02d}": i < 10 for i in range(40)})  # 25 % on every seed
    table = summarize(tmp_path, "m", paired=[], bootstrap_samples=2000)
    (level,) = table["levels"]
    assert level["name"] == "m" and level["split"] == "test"
    assert level["success_rate"]["mean"] == pytest.approx(0.25)
    lo, hi = level["success_rate"]["ci"]
    assert lo < 0.25 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 * 0.75 / 40), rel=0.2)
    assert "| m | test | 2 | 40 | 25.0 [" in comparison_markdown(table)


def test_tables_show_each_run_so_a_reader_sees_whether_the_runs_agree(tmp_path):
    """A pooled +12.5 can be two runs of +25 and 0: the levels and the paired differences list every run's own
    value, in numeric seed order (seed 2 before seed 10)."""
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    goals = [f"g{i:02d}" for i in range(40)]
    for seed, gain in ((2, 10), (10, 0)):
        base = {g: i < 8 for i, g in enumerate(goals)}  # 20 %
        _run(tmp_path, "random", seed, base)
        _run(tmp_path, "prism-gini", seed, {g: i < 8 + gain for i, g in enumerate(goals)})
    table = summarize(tmp_path, "random", paired=[["prism-gini", "random"]], bootstrap_samples=500)
    (row,) = table["paired"]
    assert row["success_rate"]["mean"] == pytest.approx(0.125)
    assert row["success_rate"]["by_seed"] == [[2, pytest.approx(0.25)], [10, 0.0]]
    levels = {r["name"]: r["success_rate"] for r in table["levels"]}
    assert levels["prism-gini"]["by_seed"] == [[2, pytest.approx(0.45)], [10, pytest.approx(0.2)]]
    md = comparison_markdown(table)
    assert "| prism-gini − random | test | 2 | 40 | +12.5 [" in md and "| +25.0 / +0.0 |" in md
    assert "| prism-gini | test | 2 | 40 | 32.5 [" in md and "| 45.0 / 20.0 |" in md
    # one run: nothing to list beyond the pooled value, so no column
    single = tmp_path / "single"
    _run(single, "random", 0, {g: True for g in goals})
    assert "by run" not in comparison_markdown(summarize(single, "random", paired=[], bootstrap_samples=100))


def test_by_task_type_splits_a_difference_into_where_it_comes_from(tmp_path):
    """A +10 over a whole split can be +20 on one task type and 0 on the other: ``table --by_task_type true``
    gives every type its own levels and paired differences; without it, only the split."""
    from prism_lit.pipeline.compare import comparison_markdown, table

    def run(method, seed, won):
        _run(tmp_path, method, seed, won)
        path = tmp_path / method / f"seed{seed}" / "eval" / "episodes.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:  # goals a00–a19 are of type "heat", b00–b19 of type "look"
            r["task_type"] = "heat" if r["task_id"].startswith("a") else "look"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    goals = [f"{t}{i:02d}" for t in "ab" for i in range(20)]
    for seed in (0, 1):
        run("base", seed, {g: g.startswith("b") and int(g[1:]) < 10 for g in goals})  # heat 0 %, look 50 %
        run("rl-100", seed, {g: int(g[1:]) < (4 if g.startswith("a") else 10) for g in goals})  # heat 20 %, look 50 %
    table(str(tmp_path), "rl-100", paired=[["rl-100", "base"]], bootstrap_samples=500, by_task_type=True)
    summary = json.loads((tmp_path / "comparison.json").read_text())
    diff = {r["split"]: r["success_rate"] for r in summary["paired"]}
    assert set(diff) == {"test", "test/heat", "test/look"}
    assert diff["test"]["mean"] == pytest.approx(0.10)
    assert diff["test/heat"]["mean"] == pytest.approx(0.20) and diff["test/heat"]["ci"][0] > 0.0
    assert diff["test/look"]["mean"] == 0.0 and diff["test/look"]["ci"] == [0.0, 0.0]
    assert diff["test/heat"]["n_goals"] == 20
    levels = {(r["name"], r["split"]): r["success_rate"]["mean"] for r in summary["levels"]}
    assert levels[("base", "test/look")] == pytest.approx(0.5) and levels[("rl-100", "test/heat")] == pytest.approx(0.2)
    assert "| rl-100 − base | test/heat | 2 | 20 | +20.0 [" in comparison_markdown(summary)
    table(str(tmp_path), "rl-100", paired=[["rl-100", "base"]], bootstrap_samples=500)
    assert {r["split"] for r in json.loads((tmp_path / "comparison.json").read_text())["paired"]} == {"test"}


def test_by_task_type_joins_each_types_success_with_the_share_routed_to_rl(tmp_path):
    """`table --by_task_type true`: one row per method, each type's success per split next to the share of its
    corpus trajectories sent to RL (a range over runs), and no share for a method that routes nothing."""
    from prism_lit.pipeline.compare import comparison_markdown, summarize
    from prism_lit.probe.partition import Partition, save_partition

    types = {"a0": "heat", "a1": "heat", "b0": "look", "b1": "look"}
    for method, seed, rl_ids, heat in (("prism-gini", 0, ["a0", "a1"], 0.5), ("prism-gini", 1, ["a0", "b0"], 0.0),
                                       ("rl-100", 0, list(types), 0.25)):
        _run(tmp_path, method, seed, {"g0": True, "g1": False})
        report_path = tmp_path / method / f"seed{seed}" / "report.json"
        report = json.loads(report_path.read_text())
        report["eval"]["webshop"]["test"]["per_task_type"] = {"heat": {"success_rate": heat},
                                                              "look": {"success_rate": 1.0}}
        report_path.write_text(json.dumps(report))
        save_partition(tmp_path / method / f"seed{seed}" / "probe" / "partition.json", Partition(
            router="r", score=None, threshold=None, rl_fraction=None, sft_ids=sorted(set(types) - set(rl_ids)),
            rl_ids=sorted(rl_ids), task_of={t: t for t in types}, task_type_of=types))
    md = comparison_markdown(summarize(tmp_path, "rl-100", paired=[], bootstrap_samples=50, by_task_type=True))
    assert "## By task type" in md and "| method | heat | look |" in md
    assert "| prism-gini | 25 (50–100 % to RL) | 100 (0–50 % to RL) |" in md
    assert "| rl-100 | 25 | 100 |" in md  # every trajectory to RL: no routing to show
    assert "## By task type" not in comparison_markdown(summarize(tmp_path, "rl-100", paired=[],
                                                                  bootstrap_samples=50))
