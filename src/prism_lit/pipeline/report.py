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
    return {"router": partition.router, "score": partition.score, "threshold": partition.threshold,
            "n_sft": len(partition.sft_ids), "n_rl": len(partition.rl_ids), "by_task_type": table}


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
        "compute_seconds": {
            **{s: stages.get(s, {}).get("seconds", 0.0) for s in TRAINING_STAGES},
            "total": sum(stages.get(s, {}).get("seconds", 0.0) for s in TRAINING_STAGES),
        },
        "eval": {env_name: final},
        "eval_by_policy": evaluation,
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


def summary_markdown(report: dict[str, Any], plot: Path | None) -> str:
    lines = [f"# {report.get('method')} on {report.get('env')} (seed {report.get('seed')})", "", "## Stages", "",
             "| stage | seconds |", "|---|---|"]
    for stage, data in report["stages"].items():
        lines.append(f"| {stage} | {data['seconds']:.1f} |")
    lines.append(f"| **probe + SFT + RL** | **{report['compute_seconds']['total']:.1f}** |")
    lines += ["", "## Evaluation (greedy, fixed panels)", "",
              "| policy | split | success rate | score | mean steps | invalid-action rate |", "|---|---|---|---|---|---|"]
    for policy, splits in report["eval_by_policy"].items():
        for split, m in splits.items():
            lines.append(f"| {policy} | {split} | {_fmt(m.get('success_rate'))} | {_fmt(m.get('score'))} | "
                         f"{_fmt(m.get('mean_steps'), 2)} | {_fmt(m.get('invalid_rate'))} |")
    probe = report.get("probe") or {}
    if probe:
        lines += ["", f"## Probe and routing ({probe['router']}, score {probe['score']}, threshold "
                      f"{_fmt(probe['threshold'], 4)}: {probe['n_sft']} → SFT, {probe['n_rl']} → RL)", "",
                  "| task type | n | mean Gini | min | max | mean loss | share routed to RL |", "|---|---|---|---|---|---|---|"]
        for task_type, row in probe["by_task_type"].items():
            lines.append(f"| {task_type} | {row['n']} | {_fmt(row['gini_mean'], 4)} | {_fmt(row['gini_min'], 4)} | "
                         f"{_fmt(row['gini_max'], 4)} | {_fmt(row['loss_mean'])} | {_fmt(row['rl_share'], 2)} |")
    if plot is not None:
        lines += ["", f"![concentration per task type]({plot.relative_to(plot.parent.parent)})"]
    return "\n".join(lines) + "\n"
