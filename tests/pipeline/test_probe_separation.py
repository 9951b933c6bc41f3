"""The probe's own report of what its scores separate: AUROC unfamiliar vs familiar with DeLong intervals, and
Spearman correlations with length and loss, on hand-made records whose answers are known."""

import math
import random

import pytest

from prism_lit.pipeline.report import probe_separation, summary_markdown
from prism_lit.pipeline.stats import auroc, average_ranks, spearman
from prism_lit.probe.records import ProbeRecord


def _record(i, task_type, gini, loss, n_tokens, kurtosis=3.0, cv=0.5, l2=1.0):
    return ProbeRecord(f"t{i:03d}", f"task/{i}", task_type, [], gini, kurtosis, cv, l2, loss, n_tokens)


def test_auroc_known_values_and_delong_interval():
    assert auroc([2, 3, 4], [0, 1])["auroc"] == 1.0
    assert auroc([0, 1], [2, 3, 4])["auroc"] == 0.0
    assert auroc([1, 1], [1, 1])["auroc"] == 0.5  # all ties
    r = auroc([1, 2, 3, 0.2], [0, 0.5, 1.5])  # 9 of 12 pairs ordered right
    assert r["auroc"] == pytest.approx(0.75) and r["ci"][0] < 0.75 < r["ci"][1]
    # DeLong by hand: V10 = [2/3, 1, 1, 1/3], V01 = [1, 3/4, 1/2]
    var = (sum((v - 0.75) ** 2 for v in (2 / 3, 1, 1, 1 / 3)) / 3) / 4 + \
        (sum((v - 0.75) ** 2 for v in (1, 0.75, 0.5)) / 2) / 3
    assert r["ci"] == pytest.approx([0.75 - 1.959964 * math.sqrt(var), 1.0], abs=1e-5)
    assert auroc([float("nan"), None], [1.0])["auroc"] is None


def test_auroc_interval_covers_the_population_value_on_large_samples():
    rng = random.Random(0)
    pos = [rng.gauss(1.0, 1.0) for _ in range(400)]
    neg = [rng.gauss(0.0, 1.0) for _ in range(400)]
    r = auroc(pos, neg)
    true = 0.5 * (1 + math.erf(1.0 / 2))  # Φ(1/√2) ≈ 0.760
    assert r["ci"][0] < true < r["ci"][1] and r["ci"][1] - r["ci"][0] < 0.08


def test_spearman_ranks_ties_and_degenerate_cases():
    assert list(average_ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16])["rho"] == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert spearman([1, 2, float("nan"), 4, None], [1, 2, 3, 4, 5]) == {"rho": pytest.approx(1.0), "n": 3}
    assert spearman([1, 1, 1], [1, 2, 3])["rho"] is None and spearman([1, 2], [1, 2])["rho"] is None


def _corpus():
    """Unfamiliar trajectories have the higher loss; the Gini follows length only, not familiarity."""
    records = []
    for i in range(40):
        unfamiliar = i % 2 == 1
        n_tokens = 100 + 10 * i
        records.append(_record(i, "electronics" if unfamiliar else "beauty", gini=0.3 + n_tokens / 10_000,
                               loss=(2.5 if unfamiliar else 0.1) + i / 1000, n_tokens=n_tokens,
                               kurtosis=float(40 - i)))
    return records


def test_probe_separation_reports_auroc_and_confounds():
    sep = probe_separation(_corpus(), ["beauty", "fashion"], rl_ids={f"t{i:03d}" for i in range(1, 40, 2)})
    assert (sep["n_unfamiliar"], sep["n_familiar"]) == (20, 20)
    gini, loss, kurt = sep["scores"]["gini"], sep["scores"]["loss"], sep["scores"]["kurtosis"]
    # the loss separates perfectly; the Gini is length: ρ = 1 with n_tokens, near chance on familiarity
    assert loss["auroc_unfamiliar"]["auroc"] == 1.0 and loss["spearman_loss"] is None
    assert gini["spearman_n_tokens"]["rho"] == pytest.approx(1.0)
    assert gini["auroc_unfamiliar"]["ci"][0] < 0.5 < gini["auroc_unfamiliar"]["ci"][1]
    assert kurt["spearman_n_tokens"]["rho"] == pytest.approx(-1.0)
    assert sep["rl_share_unfamiliar"] == 1.0 and sep["rl_share_familiar"] == 0.0


def test_probe_separation_without_familiar_types_reports_correlations_only():
    sep = probe_separation(_corpus(), [])
    assert all(row["auroc_unfamiliar"] is None for row in sep["scores"].values())
    assert sep["scores"]["gini"]["spearman_n_tokens"]["rho"] == pytest.approx(1.0)
    assert "rl_share_unfamiliar" not in sep
    # every corpus type familiar: one class, no AUROC either
    assert probe_separation(_corpus(), ["beauty", "electronics"])["scores"]["gini"]["auroc_unfamiliar"] is None


def test_probe_separation_is_empty_for_a_router_that_measured_nothing():
    assert probe_separation([ProbeRecord.unmeasured("a", "t/a", "beauty")], ["beauty"]) == {}


def test_summary_shows_separation_and_intervals():
    sep = probe_separation(_corpus(), ["beauty"])
    probe = {"router": "prism", "score": "gini", "threshold": 0.3, "n_sft": 20, "n_rl": 20,
             "by_task_type": {}, "separation": sep}
    level = {"mean": 0.12, "ci": [0.06, 0.18], "n_goals": 50}
    diff = {"mean": 0.06, "ci": [-0.02, 0.14], "n_goals": 50}
    report = {"method": "m", "env": "webshop", "seed": 0, "stages": {}, "compute_seconds": {"total": 0.0},
              "eval_by_policy": {}, "probe": probe,
              "eval_intervals": {"test": {"policies": {"base": {"success_rate": level, "score": level}},
                                          "differences": {"final - base": {"success_rate": diff, "score": diff}}}}}
    md = summary_markdown(report, None)
    assert "| test | base | 50 | 12.0 [6.0, 18.0] |" in md
    assert "| test | final − base | 50 | +6.0 [-2.0, +14.0] |" in md
    assert "| loss | 1.000 |" in md and "(itself)" in md and "20 unfamiliar" in md


def test_bootstrap_mean_difference_of_independent_samples():
    from prism_lit.pipeline.stats import bootstrap_mean_difference

    same = bootstrap_mean_difference([1.0, 2.0, 3.0] * 20, [1.0, 2.0, 3.0] * 10)
    assert same["mean"] == 0.0 and same["ci"][0] < 0.0 < same["ci"][1]
    shifted = bootstrap_mean_difference([5.0] * 30, [2.0] * 10)
    assert shifted["mean"] == 3.0 and shifted["ci"] == pytest.approx([3.0, 3.0])
    assert bootstrap_mean_difference([], [1.0])["mean"] is None


def test_probe_shift_pairs_two_probes_of_one_base_goal_by_goal(tmp_path):
    """The conflict variant's read-out: the familiar goals' Gini rises by 0.05 under the other expert rule, the
    unfamiliar goals' does not move; length rises by 20 tokens everywhere."""
    from prism_lit.pipeline.report import probe_shift
    from prism_lit.probe.records import write_probe_records

    control, variant = [], []
    for i in range(30):
        task_type = "beauty" if i % 3 else "furniture"
        control.append(_record(i, task_type, gini=0.30 + i / 1000, loss=1.0, n_tokens=100 + i))
        bump = 0.05 if task_type == "beauty" else 0.0
        variant.append(_record(i, task_type, gini=0.30 + i / 1000 + bump, loss=1.2, n_tokens=120 + i))
    variant.append(_record(99, "beauty", gini=0.9, loss=1.0, n_tokens=1))  # no partner: left out
    for name, records in (("control", control), ("variant", variant)):
        (tmp_path / name / "probe").mkdir(parents=True)
        write_probe_records(tmp_path / name / "probe" / "probe.jsonl", records)
    (tmp_path / "variant" / "pipeline_config.json").write_text('{"base": {"familiar_task_types": ["beauty"]}}')
    shift = probe_shift(tmp_path / "control", tmp_path / "variant")
    assert shift["n_pairs"] == 30 and shift["familiar_task_types"] == ["beauty"]
    gini = shift["scores"]["gini"]
    assert gini["shift_familiar"]["mean"] == pytest.approx(0.05) and gini["shift_unfamiliar"]["mean"] == 0.0
    assert gini["familiar_minus_unfamiliar"]["ci"] == pytest.approx([0.05, 0.05])
    tokens = shift["scores"]["n_tokens"]
    assert tokens["shift_familiar"]["mean"] == tokens["shift_unfamiliar"]["mean"] == 20.0
    assert tokens["familiar_minus_unfamiliar"]["mean"] == 0.0
