"""The run report: ``report.json``, ``summary.md`` and plots, built from the stage artifacts of one run dir."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from prism_lit.io import atomic_write_json, atomic_write_text, save_figure
from prism_lit.pipeline.context import STAGE_ORDER, TRAINING_STAGES, Artifacts


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_episodes(run_dir: Path, by_task_type: bool = False
                  ) -> dict[tuple[str, str], dict[tuple[str, int], dict[str, float]]]:
    """``eval/episodes.jsonl`` as ``{(policy, split): {(task_id, env_seed): {"won": 0/1, "score": s, ...}}}`` (with
    the env's per-episode ``outcomes``, e.g. ``prompt_level_loose``); empty when the eval stage predates the file
    (rerun it with ``--rerun '[eval]'``). ``by_task_type``: every episode is also filed under
    ``(policy, "<split>/<task type>")``, so each task type gets its own rates and paired differences."""
    path = Artifacts(Path(run_dir)).eval_episodes
    out: dict[tuple[str, str], dict[tuple[str, int], dict[str, float]]] = {}
    if not path.is_file():
        return out
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ep = json.loads(line)
            cell = {**{k: float(v) for k, v in (ep.get("outcomes") or {}).items()},
                    "won": float(ep["won"]), "score": float(ep["score"])}
            key = (ep["task_id"], int(ep["env_seed"]))
            out.setdefault((ep["policy"], ep["split"]), {})[key] = cell
            if by_task_type and ep.get("task_type"):
                out.setdefault((ep["policy"], f"{ep['split']}/{ep['task_type']}"), {})[key] = cell
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {lineno}: not an episode record ({err!r})") from None
    return out


OUTCOMES = {"success_rate": "won", "score": "score"}
TRAINING_GROUPS = ("env", "rollout")  # the logged numbers the report summarises (rl/metrics.jsonl)


def training_metrics(run_dir: Path) -> dict[str, Any]:
    """``rl/metrics.jsonl`` summarised: per logged number of the groups ``env/`` (the env's own, e.g. the judge's
    precision on the policy's responses) and ``rollout/``, its mean over the first and the last quarter of the
    iterations and over all of them. A step logged twice (a resumed stage) counts once, its last line."""
    path = Artifacts(Path(run_dir)).rl_metrics
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    ordered = [rows[k] for k in sorted(rows)]
    out: dict[str, Any] = {"iterations": len(ordered)}
    quarter = max(1, len(ordered) // 4)
    for group in TRAINING_GROUPS:
        names = sorted({k for row in ordered for k in row if k.startswith(group + "/")})
        table = {}
        for name in names:
            def mean(part: list[dict[str, float]], name: str = name) -> float | None:
                values = [r[name] for r in part if name in r]
                return sum(values) / len(values) if values else None

            table[name.split("/", 1)[1]] = {"first": mean(ordered[:quarter]), "last": mean(ordered[-quarter:]),
                                            "mean": mean(ordered), "n": sum(name in r for r in ordered),
                                            "sum": sum(r.get(name, 0.0) for r in ordered)}  # pools counts
        if table:
            out[group] = table
    if "env" in out:  # the env's own summary of the run (e.g. the judge audit pooled over iterations)
        from prism_lit.envs import env_metrics

        env_id = ((_read(Artifacts(Path(run_dir)).config) or {}).get("env") or {}).get("id")
        summary = env_metrics(env_id).training_summary(
            {k: v["sum"] for k, v in out["env"].items()}, {k: v["mean"] for k, v in out["env"].items()})
        if summary:
            out["summary"] = summary
    return out
RUN_PAIRS = (("sft", "base"), ("final", "sft"), ("final", "base"))


def outcome_fields(env_id: str | None) -> dict[str, str]:
    """The per-episode outcomes that get intervals: success and score, then the env's own rates
    (:attr:`~prism_lit.envs.spec.EnvMetrics.rates`, e.g. IFEval's prompt-level loose accuracy)."""
    from prism_lit.envs import env_metrics

    rates = env_metrics(env_id).rates if env_id else ()
    return {**OUTCOMES, **{r: r for r in rates}}


def goal_values(cells: dict[tuple, dict[str, float]], field_name: str) -> dict[tuple, float]:
    """One outcome per goal (goals without it, e.g. from an older eval stage, left out)."""
    return {g: c[field_name] for g, c in cells.items() if field_name in c}


def eval_intervals(run_dir: Path) -> dict[str, Any]:
    """Per split: every evaluated policy's success rate and score (and the env's own rates) with a 95 % bootstrap
    interval over the panel's goals, and the paired differences SFT − base, final − SFT, final − base (same goals)
    with theirs."""
    from prism_lit.pipeline.stats import bootstrap_mean, paired_difference

    episodes = read_episodes(run_dir)
    fields = outcome_fields(((_read(Artifacts(Path(run_dir)).config) or {}).get("env") or {}).get("id"))
    out: dict[str, Any] = {}
    for (policy, split), cells in sorted(episodes.items()):
        level = out.setdefault(split, {"policies": {}, "differences": {}})["policies"].setdefault(policy, {})
        for metric, field_name in fields.items():
            if metric in OUTCOMES or goal_values(cells, field_name):
                level[metric] = bootstrap_mean({0: goal_values(cells, field_name)})
    for split, entry in out.items():
        for a, b in RUN_PAIRS:
            if (a, split) in episodes and (b, split) in episodes:
                entry["differences"][f"{a} - {b}"] = {
                    metric: paired_difference({0: goal_values(episodes[(a, split)], f)},
                                              {0: goal_values(episodes[(b, split)], f)})
                    for metric, f in fields.items() if metric in entry["policies"][a]}
    return out


def probe_summary(run_dir: Path) -> dict[str, Any]:
    """Per task type: count, mean/min/max of each score, and the share routed to RL."""
    from prism_lit.probe.partition import load_partition
    from prism_lit.probe.records import read_probe_records

    art = Artifacts(Path(run_dir))
    records_path, partition_path = art.probe_records, art.partition
    if not records_path.is_file() or not partition_path.is_file():
        return {}
    records = read_probe_records(records_path)
    partition = load_partition(partition_path)
    rl = set(partition.rl_ids)
    by_type: dict[str, list] = defaultdict(list)
    for r in records:
        by_type[r.task_type or "(none)"].append(r)
    table = {}
    for task_type, rows in sorted(by_type.items()):
        ginis = [r.gini for r in rows if r.gini is not None and math.isfinite(r.gini)]
        table[task_type] = {
            "n": len(rows),
            "gini_mean": sum(ginis) / len(ginis) if ginis else None,
            "gini_min": min(ginis) if ginis else None,
            "gini_max": max(ginis) if ginis else None,
            "loss_mean": sum(r.loss for r in rows) / len(rows),
            "rl_share": sum(r.id in rl for r in rows) / len(rows),
        }
    familiar = list(((_read(art.config) or {}).get("base") or {}).get("familiar_task_types") or [])
    return {"router": partition.router, "score": partition.score, "threshold": partition.threshold,
            "n_sft": len(partition.sft_ids), "n_rl": len(partition.rl_ids), "by_task_type": table,
            "separation": probe_separation(records, familiar, rl)}


def probe_separation(records: list, familiar_task_types: list[str], rl_ids: set[str] | None = None) -> dict[str, Any]:
    """How each probe score relates to what the base knows and to two confounds.

    Per score (gini, kurtosis, cv, loss, l2 magnitude): the AUROC of telling unfamiliar trajectories (task type
    not in ``familiar_task_types``) from familiar ones, high score = unfamiliar, with DeLong's 95 % interval
    (0.5: no separation; below 0.5: the score is *lower* on unfamiliar ones); and Spearman's rank correlation
    with the trajectory's length (trained tokens) and with its loss. Without familiar types (or with only one
    class in the corpus) the AUROC is ``None`` and only the correlations are reported. ``{}`` when the probe
    measured nothing (a router that reads no score).
    """
    from prism_lit.pipeline.stats import auroc, spearman
    from prism_lit.probe.records import RECORD_SCORES

    if not any(math.isfinite(r.gini) for r in records):
        return {}
    familiar = set(familiar_task_types)
    is_unfamiliar = [(r.task_type or "") not in familiar for r in records]
    with_classes = bool(familiar) and any(is_unfamiliar) and not all(is_unfamiliar)
    lengths = [float(r.n_tokens) for r in records]
    losses = [r.loss for r in records]
    scores = {}
    for name in RECORD_SCORES:
        values = [r.score(name) for r in records]
        scores[name] = {
            "auroc_unfamiliar": (auroc([v for v, u in zip(values, is_unfamiliar) if u],
                                       [v for v, u in zip(values, is_unfamiliar) if not u])
                                 if with_classes else None),
            "spearman_n_tokens": spearman(values, lengths),
            "spearman_loss": spearman(values, losses) if name != "loss" else None,
        }
    out: dict[str, Any] = {"familiar_task_types": sorted(familiar), "n_unfamiliar": sum(is_unfamiliar),
                           "n_familiar": len(records) - sum(is_unfamiliar), "scores": scores}
    if with_classes and rl_ids is not None:
        for key, flag in (("rl_share_unfamiliar", True), ("rl_share_familiar", False)):
            ids = [r.id for r, u in zip(records, is_unfamiliar) if u == flag]
            out[key] = sum(i in rl_ids for i in ids) / len(ids)
    return out


def probe_shift(control_dir: Path, variant_dir: Path, familiar_task_types: list[str] | None = None) -> dict[str, Any]:
    """Two probes of one base on the same goals (e.g. the main job's corpus and the conflict variant's, recorded
    under another expert rule): per score, the per-goal shift variant − control for familiar and for unfamiliar
    goals, each with a 95 % bootstrap interval, and the difference of the two shifts (familiar − unfamiliar).

    Trajectories are paired by id (the corpus's i-th task); ``familiar_task_types`` defaults to the variant's
    ``base.familiar_task_types``. PRISM's premise predicts that contradicting what the base knows (the familiar
    goals' shift) raises the concentration scores more than a change it has no prior on (the unfamiliar goals').
    """
    from prism_lit.pipeline.stats import bootstrap_mean, bootstrap_mean_difference
    from prism_lit.probe.records import RECORD_SCORES, read_probe_records

    if familiar_task_types is None:
        config = _read(Artifacts(Path(variant_dir)).config) or {}
        familiar_task_types = list((config.get("base") or {}).get("familiar_task_types") or [])
    familiar = set(familiar_task_types)
    control = {r.id: r for r in read_probe_records(Artifacts(Path(control_dir)).probe_records)}
    variant = {r.id: r for r in read_probe_records(Artifacts(Path(variant_dir)).probe_records)}
    pairs = [(control[i], variant[i]) for i in sorted(set(control) & set(variant))
             if control[i].task_id == variant[i].task_id]
    out: dict[str, Any] = {"n_pairs": len(pairs), "familiar_task_types": sorted(familiar), "scores": {}}
    for name in (*RECORD_SCORES, "n_tokens"):
        shifts = {True: {}, False: {}}
        for c, v in pairs:
            d = float(getattr(v, name)) - float(getattr(c, name))
            if math.isfinite(d):
                shifts[c.task_type in familiar][c.id] = d
        out["scores"][name] = {
            "shift_familiar": bootstrap_mean({0: shifts[True]}),
            "shift_unfamiliar": bootstrap_mean({0: shifts[False]}),
            "familiar_minus_unfamiliar": bootstrap_mean_difference(list(shifts[True].values()),
                                                                   list(shifts[False].values())),
        }
    return out


def plot_concentration_by_type(run_dir: Path, out: Path) -> Path | None:
    """Histogram of the Gini score per task type, with the routing threshold."""
    from prism_lit.probe.partition import load_partition
    from prism_lit.probe.records import read_probe_records

    art = Artifacts(Path(run_dir))
    records_path = art.probe_records
    if not records_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_probe_records(records_path)
    partition = load_partition(art.partition)
    by_type: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.gini is not None and math.isfinite(r.gini):
            by_type[r.task_type or "(none)"].append(r.gini)
    fig, ax = plt.subplots(figsize=(7, 4))
    all_values = [v for vs in by_type.values() for v in vs]
    bins = 30 if not all_values else [min(all_values) + i * (max(all_values) - min(all_values) + 1e-9) / 30
                                      for i in range(31)]
    for task_type, values in sorted(by_type.items()):
        ax.hist(values, bins=bins, alpha=0.5, label=f"{task_type} (n={len(values)})")
    if partition.threshold is not None and partition.score == "gini":
        ax.axvline(partition.threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("Gini of per-unit gradient norms")
    ax.set_ylabel("trajectories")
    ax.set_title("Gradient concentration per task type (base model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def env_short_name(env_id: str) -> str:
    """``webshop`` for ``webshop`` and ``prism_lit/WebShop-v0``: the name reports and tables use."""
    from prism_lit.envs import env_spec

    try:
        return env_spec(env_id).name
    except ValueError:  # an env registered outside prism_lit
        return env_id.split("/")[-1].lower().removesuffix("-v0")


def compute_seconds(stages: dict[str, Any]) -> dict[str, float]:
    """Seconds per training stage and their total. A probe stage that routed an earlier pass's records counts that
    pass's measured seconds too: the method's cost when run alone, so methods that shared a probe compare fairly."""
    seconds = {s: stages.get(s, {}).get("seconds", 0.0) for s in TRAINING_STAGES}
    if "probe" in seconds:
        seconds["probe"] += stages.get("probe", {}).get("info", {}).get("measured_seconds") or 0.0
    return {**seconds, "total": sum(seconds.values())}


def build_report(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    art = Artifacts(run_dir)
    config = _read(art.config) or {}
    stages = {}
    for stage in STAGE_ORDER[:-1]:
        marker = art.read_marker(stage)
        if marker is not None:
            stages[stage] = {"seconds": marker["seconds"], "info": marker.get("info", {})}
    evaluation = _read(art.eval_results) or {}
    env_name = env_short_name(str(config.get("env", {}).get("id", "env")))
    final = evaluation.get("final") or {}
    report = {
        "method": config.get("method"),
        "seed": config.get("seed"),
        "env": env_name,
        "stages": stages,
        "compute_seconds": compute_seconds(stages),
        "eval": {env_name: final},
        "eval_by_policy": evaluation,
        "eval_intervals": eval_intervals(run_dir),
        "training": training_metrics(run_dir),
        "probe": probe_summary(run_dir),
    }
    atomic_write_json(art.report, report)
    plot = plot_concentration_by_type(run_dir, art.concentration_plot)
    atomic_write_text(art.summary, summary_markdown(report, plot))
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cut_data_lines(stages: dict[str, Any]) -> list[str]:
    """A warning under the stage table for every training stage whose data lost turns to ``max_length``: the log
    says it once, mid-run; the summary is what is read afterwards."""
    lines = []
    for stage, data in stages.items():
        stats = (data.get("info") or {}).get("data") or {}
        cut, skipped = stats.get("truncated", 0), stats.get("skipped", 0)
        if cut:
            lines.append(f"> **{stage}: {cut} of {stats['read']} trajectories were cut at max_length "
                         f"{stats['max_length']}** (the longest has {stats.get('longest_truncated_tokens')} tokens; "
                         f"truncation {stats['truncation']}): their cut turns were not trained. The base's "
                         "pre-training and SFT both read `sft.max_length`.")
        if skipped:
            lines.append(f"> **{stage}: {skipped} of {stats['read']} trajectories were skipped** (over max_length "
                         f"{stats['max_length']} with truncation {stats['truncation']}, or nothing to train).")
    return [part for line in lines for part in ("", line)]  # a blank line before each: one quote block apiece


def summary_markdown(report: dict[str, Any], plot: Path | None) -> str:
    lines = [f"# {report.get('method')} on {report.get('env')} (seed {report.get('seed')})", "", "## Stages", "",
             "| stage | seconds |", "|---|---|"]
    for stage, data in report["stages"].items():
        lines.append(f"| {stage} | {data['seconds']:.1f} |")
    lines.append(f"| **probe + SFT + RL** | **{report['compute_seconds']['total']:.1f}** |")
    lines += _cut_data_lines(report["stages"])
    lines += ["", "## Evaluation (greedy, fixed panels)", "",
              "| policy | split | success rate | score | mean steps | invalid-action rate |", "|---|---|---|---|---|---|"]
    for policy, splits in report["eval_by_policy"].items():
        for split, m in splits.items():
            lines.append(f"| {policy} | {split} | {_fmt(m.get('success_rate'))} | {_fmt(m.get('score'))} | "
                         f"{_fmt(m.get('mean_steps'), 2)} | {_fmt(m.get('invalid_rate'))} |")
    lines += _interval_lines(report.get("eval_intervals") or {})
    lines += _env_metric_lines(report["eval_by_policy"])
    lines += _training_lines(report.get("training") or {})
    probe = report.get("probe") or {}
    if probe:
        lines += ["", f"## Probe and routing ({probe['router']}, score {probe['score']}, threshold "
                      f"{_fmt(probe['threshold'], 4)}: {probe['n_sft']} → SFT, {probe['n_rl']} → RL)", "",
                  "| task type | n | mean Gini | min | max | mean loss | share routed to RL |", "|---|---|---|---|---|---|---|"]
        for task_type, row in probe["by_task_type"].items():
            lines.append(f"| {task_type} | {row['n']} | {_fmt(row['gini_mean'], 4)} | {_fmt(row['gini_min'], 4)} | "
                         f"{_fmt(row['gini_max'], 4)} | {_fmt(row['loss_mean'])} | {_fmt(row['rl_share'], 2)} |")
        lines += _separation_lines(probe.get("separation") or {})
    if plot is not None:
        lines += ["", f"![concentration per task type]({plot.relative_to(plot.parent.parent)})"]
    return "\n".join(lines) + "\n"


def _pct(stat: dict[str, Any] | None, signed: bool = False) -> str:
    """``12.0 [6.0, 18.0]`` (``+6.0 [+1.0, +11.0]`` when ``signed``) in points from a bootstrap result, or ``–``."""
    if not stat or stat.get("mean") is None:
        return "–"
    f = "+.1f" if signed else ".1f"
    lo, hi = stat["ci"]
    return f"{stat['mean'] * 100:{f}} [{lo * 100:{f}}, {hi * 100:{f}}]"


def _env_metric_lines(by_policy: dict[str, Any]) -> list[str]:
    """The env's own panel metrics (``env_metrics`` in eval.json, e.g. IFEval's four scores), one row per panel."""
    rows = [(policy, split, m["env_metrics"]) for policy, splits in by_policy.items()
            for split, m in splits.items() if m.get("env_metrics")]
    if not rows:
        return []
    names = list(rows[0][2])
    lines = ["", "## Environment metrics (the env's own, on the same episodes)", "",
             "| policy | split | " + " | ".join(n.replace("_", " ") for n in names) + " |", "|---" * (len(names) + 2) + "|"]
    for policy, split, m in rows:
        lines.append(f"| {policy} | {split} | " + " | ".join(_fmt(m.get(n)) for n in names) + " |")
    return lines


def _training_lines(training: dict[str, Any]) -> list[str]:
    """The RL iterations' logged numbers (rl/metrics.jsonl): the env's (e.g. the judge audit) and the rollouts'."""
    groups = [g for g in TRAINING_GROUPS if training.get(g)]
    if not groups:
        return []
    lines = ["", f"## During RL ({training['iterations']} iterations, the policy's own sampled episodes)", "",
             "| number | first quarter | last quarter | all iterations | iterations with it |", "|---|---|---|---|---|"]
    for group in groups:
        for name, row in training[group].items():
            lines.append(f"| {group}/{name} | {_fmt(row['first'])} | {_fmt(row['last'])} | {_fmt(row['mean'])} | "
                         f"{row['n']} |")
    if training.get("summary"):
        lines += ["", "Over the whole run (the env's summary; counts pooled over iterations): "
                  + ", ".join(f"{name.replace('_', ' ')} {_fmt(value)}" for name, value in training["summary"].items())
                  + "."]
    return lines


def _interval_label(metric: str) -> str:
    return {"success_rate": "success rate (%)", "score": "score (×100)"}.get(metric, f"{metric.replace('_', ' ')} (%)")


def _interval_lines(intervals: dict[str, Any]) -> list[str]:
    if not intervals:
        return []
    metrics = list(next(iter(next(iter(intervals.values()))["policies"].values()), {}))
    lines = ["", "## Evaluation with 95 % intervals (bootstrap over the panel's goals, this seed only)", "",
             "| split | policy or paired difference | goals | " + " | ".join(_interval_label(m) for m in metrics) + " |",
             "|---" * (len(metrics) + 3) + "|"]
    for split, entry in intervals.items():
        rows = [(name, m, False) for name, m in entry["policies"].items()]
        rows += [(name.replace(" - ", " − "), m, True) for name, m in entry["differences"].items()]
        for name, m, signed in rows:
            lines.append(f"| {split} | {name} | {m['success_rate']['n_goals']} | "
                         + " | ".join(_pct(m.get(metric), signed) for metric in metrics) + " |")
    lines += ["", "A difference is paired (the same goals for both policies); an interval that contains 0 does not "
                  "resolve it. One seed: the interval covers the choice of goals, not run-to-run variation."]
    return lines


def _separation_lines(sep: dict[str, Any]) -> list[str]:
    if not sep:
        return []
    with_auroc = any(row["auroc_unfamiliar"] for row in sep["scores"].values())
    lines = ["", "### What the scores separate", ""]
    if with_auroc:
        lines += [f"AUROC: how well each score, high = unfamiliar, tells the {sep['n_unfamiliar']} unfamiliar "
                  f"trajectories (task types other than {', '.join(sep['familiar_task_types'])}) from the "
                  f"{sep['n_familiar']} familiar ones (0.5 = not at all; below 0.5 = lower on unfamiliar ones; "
                  "DeLong 95 % interval). Spearman ρ with the trajectory's trained tokens and with its loss show "
                  "whether a score is mostly length or difficulty.", ""]
    else:
        lines += ["No familiar task types are configured (base.familiar_task_types), so no AUROC; Spearman ρ with "
                  "the trajectory's trained tokens and with its loss.", ""]
    lines += ["| score | AUROC unfamiliar vs familiar | 95 % interval | ρ with length | ρ with loss |",
              "|---|---|---|---|---|"]
    for name, row in sep["scores"].items():
        a = row["auroc_unfamiliar"] or {}
        ci = f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]" if a.get("ci") else "–"
        rho_loss = (row["spearman_loss"] or {}).get("rho")
        lines.append(f"| {name} | {_fmt(a.get('auroc'))} | {ci} | {_fmt(row['spearman_n_tokens']['rho'])} | "
                     f"{_fmt(rho_loss) if name != 'loss' else '(itself)'} |")
    if "rl_share_unfamiliar" in sep:
        lines += ["", f"Routed to RL: {sep['rl_share_unfamiliar'] * 100:.0f} % of the unfamiliar trajectories, "
                      f"{sep['rl_share_familiar'] * 100:.0f} % of the familiar ones."]
    return lines
