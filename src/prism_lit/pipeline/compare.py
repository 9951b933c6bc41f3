"""``prism-lit compare``: run several pipeline configs over seeds and write the paper-style table and plots.

The task corpus and the base model are built once in ``<out_dir>/shared/all/`` (with the first config's seed) and linked
into every method's run dir, as the paper fixes its dataset and base model and varies only training across
seeds; with ``data_per_seed`` each seed gets its own in ``<out_dir>/shared/seed<k>/``. Each method then runs its
own probe, routing, SFT, RL and evaluation (their wall-clock is what the table compares). Every run dir
resumes, so a killed comparison continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from prism_lit.io import atomic_write_json, atomic_write_text, save_figure
from prism_lit.pipeline.context import SHARED_STAGES


def _parse_pipeline_config(path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's keyword arguments from a YAML config (validated by the pipeline's own signature)."""
    from jsonargparse import ArgumentParser

    from prism_lit.pipeline.run import pipeline

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(pipeline)
    parser.add_argument("--config", action="config")
    args = ["--config", path] + [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    try:
        init = parser.instantiate_classes(parser.parse_args(args))
    except Exception as err:
        raise ValueError(f"compare: {path}: {' '.join(str(err).split())}") from err
    return {k: v for k, v in vars(init).items() if k != "config"}


def _link_shared(shared: Path, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        target = run_dir / stage
        if not target.exists():
            os.symlink(os.path.relpath(shared / stage, run_dir), target)


def _run_method(config: str, seed: int, run_dir: str, threads: int) -> None:
    """One method × seed in a worker process of its own: ``threads`` torch threads, output in ``pipeline.log``."""
    log = os.open(Path(run_dir) / "pipeline.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import torch

    torch.set_num_threads(threads)
    from prism_lit.pipeline.run import pipeline

    pipeline(**{**_parse_pipeline_config(config, {"seed": seed}), "run_dir": run_dir})


def _run_parallel(jobs: list[tuple[str, int, Path]], workers: int) -> list[str]:
    """Run ``(config, seed, run_dir)`` jobs ``workers`` at a time, each in a fresh process with an equal share of
    the cores; returns one line per failed job."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"compare: {len(jobs)} runs, {workers} at a time with {threads} thread(s) each; logs in <run_dir>/pipeline.log",
          flush=True)
    failures = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(_run_method, config, seed, str(run_dir), threads): run_dir
                   for config, seed, run_dir in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            run_dir = futures[future]
            try:
                future.result()
                status = "finished"
            except Exception as err:  # noqa: BLE001 - every other run goes on; the failures are raised together
                failures.append(f"{run_dir}: {type(err).__name__}: {err} (log: {run_dir / 'pipeline.log'})")
                status = "FAILED"
            print(f"compare: [{done}/{len(jobs)}] {run_dir} {status}", flush=True)
    return failures


def compare(
    configs: list[str] | None = None,
    seeds: list[int] | None = None,
    out_dir: str = "runs/compare",
    reference: str = "rl-100",
    data_per_seed: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Run every config for every seed; write ``comparison.json``, ``comparison.md`` and plots in ``out_dir``.

    Args:
        configs: pipeline YAML files, one per method (their ``method`` names the rows).
        seeds: seeds (default ``[0, 1, 2]``); each gets its own probe, routing, SFT, RL and evaluation runs.
        out_dir: where the runs, the table and the plots go.
        reference: the method whose total compute is the speed-up's denominator (RL on 100 % in the paper).
        data_per_seed: give every seed its own task corpus and base model (default: one of each, built with the
            first config's own ``seed`` and shared by every seed).
        workers: runs (method × seed) at once, each in its own process with ``cpu_count // workers`` threads
            and its output in ``<run_dir>/pipeline.log``; the shared corpus and base model are built first, with
            every thread. With ``1`` everything runs in this process, one run after another.
    """
    from prism_lit.pipeline.run import pipeline

    if not configs:
        raise ValueError("compare: give the pipeline configs to compare (configs: [a.yaml, b.yaml, ...])")
    if workers < 1:
        raise ValueError(f"compare: workers must be >= 1, got {workers}")
    out = Path(out_dir)
    seeds = [0, 1, 2] if seeds is None else seeds
    for config in configs:  # every config is checked before the first run starts
        _parse_pipeline_config(config, {})
    jobs = []
    for seed in seeds:
        shared = out / "shared" / (f"seed{seed}" if data_per_seed else "all")
        data_seed = {"seed": seed} if data_per_seed else {}
        first = _parse_pipeline_config(configs[0], {"run_dir": str(shared), **data_seed})
        pipeline(**{**first, "stop_after": SHARED_STAGES[-1]})
        for config in configs:
            kwargs = _parse_pipeline_config(config, {"seed": seed})
            run_dir = out / kwargs["method"] / f"seed{seed}"
            _link_shared(shared, run_dir)
            if workers == 1:
                pipeline(**{**kwargs, "run_dir": str(run_dir)})
            else:
                jobs.append((config, seed, run_dir))
    failures = _run_parallel(jobs, workers) if jobs else []
    table = summarize(out, reference)
    atomic_write_json(out / "comparison.json", table)
    atomic_write_text(out / "comparison.md", comparison_markdown(table))
    plot_pareto(table, out / "pareto.png")
    if failures:
        raise RuntimeError(f"compare: {len(failures)} run(s) failed (the table has the others):\n" + "\n".join(failures))
    return {"table": str(out / "comparison.md"), "methods": list(table["methods"])}


def _mean_std(values: list[float]) -> dict[str, float | int | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(out: Path, reference: str) -> dict[str, Any]:
    """Mean and spread over seeds of every metric, per method."""
    methods: dict[str, dict[str, Any]] = {}
    for report_path in sorted(out.glob("*/seed*/report.json")):
        report = json.loads(report_path.read_text())
        method = report["method"]
        row = methods.setdefault(method, {"runs": [], "metrics": {}, "trained": False})
        row["runs"].append(str(report_path.parent))
        row["trained"] |= any((report.get("stages", {}).get(stage, {}).get("info") or {}).get("trained", True)
                              for stage in ("sft", "rl"))
        metrics: dict[str, float] = {}
        for split, m in next(iter(report["eval"].values()), {}).items():
            metrics[f"{split}/success_rate"] = m.get("success_rate")
            metrics[f"{split}/score"] = m.get("score")
            for task_type, tm in (m.get("per_task_type") or {}).items():
                metrics[f"{split}/{task_type}/success_rate"] = tm.get("success_rate")
        for stage, seconds in report["compute_seconds"].items():
            metrics[f"seconds/{stage}"] = seconds
        for key, value in metrics.items():
            row["metrics"].setdefault(key, []).append(value)
    for row in methods.values():
        row["metrics"] = {k: _mean_std(v) for k, v in row["metrics"].items()}
    ref = methods.get(reference, {}).get("metrics", {}).get("seconds/total", {}).get("mean")
    for row in methods.values():
        total = row["metrics"].get("seconds/total", {}).get("mean")
        # a method that trains nothing (the base) has no speed-up to report
        row["speedup_vs_reference"] = (ref / total) if ref and total and row["trained"] else None
    return {"reference": reference, "methods": methods}


def _cell(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def comparison_markdown(table: dict[str, Any]) -> str:
    methods = table["methods"]
    keys = sorted({k for row in methods.values() for k in row["metrics"]})
    quality = [k for k in keys if not k.startswith("seconds/")]
    lines = ["| method | seeds | " + " | ".join(quality) + " | probe s | SFT s | RL s | total s | speed-up vs "
             f"{table['reference']} |", "|---" * (len(quality) + 7) + "|"]
    for name, row in methods.items():
        m = row["metrics"]
        cells = [_cell(m.get(k)) for k in quality]
        secs = [_cell(m.get(f"seconds/{s}"), 1.0, 0) for s in ("probe", "sft", "rl", "total")]
        speed = f"{row['speedup_vs_reference']:.2f}×" if row.get("speedup_vs_reference") else "–"
        lines.append(f"| {name} | {len(row['runs'])} | " + " | ".join(cells + secs + [speed]) + " |")
    n_seeds = max((len(r["runs"]) for r in methods.values()), default=0)
    lines += ["", (f"Success rates and scores in %, mean ± standard deviation over {n_seeds} seed(s); seconds of "
                   "wall-clock per stage (probe + SFT + RL = total).")]
    return "\n".join(lines) + "\n"


_LABEL_OFFSETS = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (-5, 14), (5, -21), (-5, -21)]


def _place_labels(ax, points: list[tuple[str, float, float]]) -> None:
    """Annotate each point with its name at the first offset whose label overlaps no label placed before."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for name, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        for dx, dy in _LABEL_OFFSETS:
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                               ha="left" if dx > 0 else "right")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:  # every offset collides: keep the first
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=_LABEL_OFFSETS[0], fontsize=8)
            box = text.get_window_extent(renderer)
        placed.append(box)


def plot_pareto(table: dict[str, Any], out: Path) -> None:
    """Success (and, where the env has one, score) vs training compute, one point per method (mean over seeds,
    error bars = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, split = [], ""
    for name, row in table["methods"].items():
        m = row["metrics"]
        total = m.get("seconds/total", {})
        success_keys = [k for k in m if k.endswith("/success_rate") and k.count("/") == 1]
        if not success_keys or total.get("mean") is None or m[success_keys[0]].get("mean") is None:
            continue
        score = m.get(success_keys[0].replace("success_rate", "score"), {})
        rows.append((name, total, m[success_keys[0]], score if score.get("mean") is not None else None))
        split = success_keys[0].split("/")[0]
    panels = [("success_rate", f"{split} success rate (%)")]
    # a score panel only where the env's score says more than success (WebShop's reward; ALFWorld's equals it)
    if rows and all(r[3] is not None for r in rows) and any(r[3]["mean"] != r[2]["mean"] for r in rows):
        panels.append(("score", f"{split} score (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        points = []
        for name, total, success, score in rows:
            stat = success if key == "success_rate" else score
            ax.errorbar(total["mean"], stat["mean"] * 100, xerr=total["std"], yerr=stat["std"] * 100, fmt="o",
                        capsize=3)
            points.append((name, total["mean"], stat["mean"] * 100))
        ax.set_xlabel("training wall-clock, probe + SFT + RL (s)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} vs compute")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)  # room for the labels of the rightmost points
        fig.tight_layout()
        _place_labels(ax, points)
    save_figure(fig, out)
