"""``prism-lit compare``: run several pipeline configs over seeds and write the paper-style table and plots.

The task corpus and the base model are built once in ``<out_dir>/shared/all/`` (with the first config's seed) and linked
into every method's run dir, as the paper fixes its dataset and base model and varies only training across
seeds; with ``data_per_seed`` each seed gets its own in ``<out_dir>/shared/seed<k>/``. Each method then runs its
own routing, SFT, RL and evaluation (their wall-clock is what the table compares). Methods whose routers read the
same probe measurement (the same base, corpus and rendering) share one probe pass: the first such run measures,
before the others start, and the others route its records (``probe.scores_from``), each counting the pass's seconds
as its own probe cost. Every run dir resumes, so a killed comparison continues where it stopped.

The table gives each metric's mean and sample standard deviation over seeds, every evaluated policy's success
and score with a 95 % interval, and the paired differences A − B of the ``paired`` methods (same goals, same
seeds) with 95 % intervals; the intervals come from each run's ``eval/episodes.jsonl`` by a seeded bootstrap
over goals and seeds (:mod:`prism_lit.pipeline.stats`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
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


def _measuring_settings(kwargs: dict[str, Any]) -> str | None:
    """What a run's probe pass would measure with, as text (equal text: one pass serves both runs); ``None`` for a
    run that measures nothing (a router without scores) or was given its records already."""
    from prism_lit.pipeline.config import settings_json

    probe = kwargs["probe"]
    if not getattr(probe.router, "needs_scores", True) or probe.scores_from is not None:
        return None
    return json.dumps({"env": settings_json(kwargs["env"]), "base": settings_json(kwargs["base"]),
                       "corpus_tasks": probe.corpus_tasks, "corpus_file": probe.corpus_file,
                       "max_length": probe.max_length}, sort_keys=True, default=str)


def _share_probes(plan: list, pipeline: Any) -> dict[Path, str]:
    """Run each group's first probe (runs measuring the same thing on the same shared data) and return the
    ``probe.scores_from`` of every other run of the group. A measuring run kept from before probe_meta.json said
    what it measured with is not shared from (its group measures run by run)."""
    from prism_lit.probe.runner import PROBE_META_FILE

    groups: dict[tuple[Path, str], list[tuple[dict[str, Any], Path]]] = {}
    for shared, _first, runs in plan:
        for _config, kwargs, run_dir in runs:
            key = _measuring_settings(kwargs)
            if key is not None:
                groups.setdefault((shared, key), []).append((kwargs, run_dir))
    scores_from: dict[Path, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        kwargs, measurer = members[0]
        print(f"compare: one probe pass for {len(members)} runs: {measurer}", flush=True)
        pipeline(**{**kwargs, "run_dir": str(measurer), "stop_after": "probe"})
        meta = json.loads((measurer / "probe" / PROBE_META_FILE).read_text())
        if "measured_with" in meta:
            scores_from.update({run_dir: str(measurer / "probe") for _kwargs, run_dir in members[1:]})
    return scores_from


def _run_method(config: str, seed: int, run_dir: str, threads: int, overrides: dict[str, Any] | None = None) -> None:
    """One method × seed in a worker process of its own: ``threads`` torch threads, output in ``pipeline.log``."""
    log = os.open(Path(run_dir) / "pipeline.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    from prism_lit.errors import stop_on_sigterm

    stop_on_sigterm()  # a worker is not started through prism_lit.cli.main
    import torch

    torch.set_num_threads(threads)
    from prism_lit.pipeline.run import pipeline

    pipeline(**{**_parse_pipeline_config(config, {**(overrides or {}), "seed": seed}), "run_dir": run_dir})


def _run_parallel(jobs: list[tuple[str, int, Path, dict[str, Any]]], workers: int) -> list[str]:
    """Run ``(config, seed, run_dir, overrides)`` jobs ``workers`` at a time, each in a fresh process with an equal
    share of the cores; returns one line per failed job."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from prism_lit.errors import Terminated

    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"compare: {len(jobs)} runs, {workers} at a time with {threads} thread(s) each; logs in <run_dir>/pipeline.log",
          flush=True)
    failures = []
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    waiting, running, done = list(jobs), {}, 0
    try:
        # Submitted only as a worker frees up: the executor queues submitted jobs ahead of its workers, and a job it
        # has queued is started by a fresh worker even after shutdown(cancel_futures=True) (a stopped compare would
        # then go on running it).
        while waiting or running:
            while waiting and len(running) < workers:
                config, seed, run_dir, overrides = waiting.pop(0)
                running[pool.submit(_run_method, config, seed, str(run_dir), threads, overrides)] = run_dir
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run_dir = running.pop(future)
                done += 1
                try:
                    future.result()
                    status = "finished"
                except (Exception, Terminated) as err:  # noqa: BLE001 - every other run goes on; failures raised together
                    # a worker stopped by SIGTERM on its own is a failed run; run compare again to resume it
                    failures.append(f"{run_dir}: {type(err).__name__}: {err} (log: {run_dir / 'pipeline.log'})")
                    status = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                print(f"compare: [{done}/{len(jobs)}] {run_dir} {status}", flush=True)
    except BaseException:
        # Ctrl-C or SIGTERM to compare itself: stop the runs now instead of waiting for them to finish (a worker
        # stops as the CLI does on SIGTERM; each run dir resumes)
        for child in multiprocessing.active_children():
            child.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return failures


def compare(
    configs: list[str] | None = None,
    seeds: list[int] | None = None,
    out_dir: str = "runs/compare",
    reference: str = "rl-100",
    data_per_seed: bool = False,
    workers: int = 1,
    paired: list[list[str]] | None = None,
    bootstrap_samples: int = 10_000,
    overrides: dict[str, Any] | None = None,
    share_probe: bool = True,
    by_task_type: bool = False,
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
        paired: ``[A, B]`` pairs whose difference A − B is reported per split, paired by goal and seed, with a
            95 % interval from a bootstrap over goals and seeds (:mod:`prism_lit.pipeline.stats`). ``A`` names a
            method (its final policy) or ``method:policy`` (``rl-100:base``, where that run evaluated the base).
            Default: PRISM-Gini against random, SFT-100 and SFT-then-RL (pairs with a method not in the table are
            listed as missing).
        bootstrap_samples: bootstrap replicates of every interval (seeded: the table repeats exactly).
        overrides: settings applied to every config, as on the pipeline's command line without the dashes
            (``{"env.eval_splits": {"test": 200}}``, ``{"base.path": "runs/pipeline_webshop/base/model"}``), so a
            variant of a benchmark reuses the baseline configs.
        share_probe: runs whose routers read the same probe measurement share one probe pass (made first, with
            every thread); each still routes, and counts the pass's seconds as its probe cost. ``False``: every
            run measures its own.
        by_task_type: also give every task type of a split (``valid_seen/pick_heat_then_place_in_recep``, a
            WebShop category) its own levels and paired differences: where a difference comes from.
    """
    overrides = dict(overrides or {})
    from prism_lit.pipeline.run import check_pipeline, pipeline

    if not configs:
        raise ValueError("compare: give the pipeline configs to compare (configs: [a.yaml, b.yaml, ...])")
    if workers < 1:
        raise ValueError(f"compare: workers must be >= 1, got {workers}")
    _check_pairs(DEFAULT_PAIRS if paired is None else paired)
    out = Path(out_dir)
    seeds = [0, 1, 2] if seeds is None else seeds
    plan = []
    for seed in seeds:
        shared = out / "shared" / (f"seed{seed}" if data_per_seed else "all")
        data_seed = {"seed": seed} if data_per_seed else {}
        first = _parse_pipeline_config(configs[0], {**overrides, "run_dir": str(shared), **data_seed})
        runs = [(config, _parse_pipeline_config(config, {**overrides, "seed": seed})) for config in configs]
        plan.append((shared, first, [(config, kwargs, out / kwargs["method"] / f"seed{seed}") for config, kwargs in runs]))
    for _shared, first, runs in plan:  # run dirs kept from an earlier call must match: a mismatch stops before any run
        check_pipeline(**{**first, "stop_after": SHARED_STAGES[-1]})
        for config, kwargs, run_dir in runs:
            try:
                check_pipeline(**{**kwargs, "run_dir": str(run_dir)})
            except ValueError as err:
                raise ValueError(f"compare: {config} (run {run_dir}): {err}") from None
    for shared, first, runs in plan:
        pipeline(**{**first, "stop_after": SHARED_STAGES[-1]})
        for _config, _kwargs, run_dir in runs:
            _link_shared(shared, run_dir)
    scores_from = _share_probes(plan, pipeline) if share_probe else {}
    jobs = []
    for _shared, _first, runs in plan:
        for config, kwargs, run_dir in runs:
            reuse = {"probe.scores_from": scores_from[run_dir]} if run_dir in scores_from else {}
            if workers == 1:
                if reuse:
                    kwargs = {**kwargs, "probe": replace(kwargs["probe"], scores_from=reuse["probe.scores_from"])}
                pipeline(**{**kwargs, "run_dir": str(run_dir)})
            else:
                jobs.append((config, kwargs["seed"], run_dir, {**overrides, **reuse}))
    failures = _run_parallel(jobs, workers) if jobs else []
    written = table(str(out), reference, paired=paired, bootstrap_samples=bootstrap_samples, by_task_type=by_task_type)
    if failures:
        raise RuntimeError(f"compare: {len(failures)} run(s) failed (the table has the others):\n" + "\n".join(failures))
    return written


def table(
    out_dir: str = "runs/compare",
    reference: str = "rl-100",
    paired: list[list[str]] | None = None,
    bootstrap_samples: int = 10_000,
    by_task_type: bool = False,
) -> dict[str, Any]:
    """Rebuild ``comparison.md``, ``comparison.json`` and ``pareto.png`` from the run dirs already in ``out_dir``
    (``<method>/seed<k>/`` with a report; a method dir may be a link to another comparison's), training nothing:
    for runs made one by one with ``prism-lit pipeline``, or other pairs over the same runs.

    Args:
        out_dir: the directory holding ``<method>/seed<k>/`` run dirs; the table is written there.
        reference: the method whose total compute is the speed-up's denominator.
        paired: ``[A, B]`` pairs to difference, as in ``compare``.
        bootstrap_samples: bootstrap replicates of every interval.
        by_task_type: also give every task type of a split its own levels and paired differences, as in
            ``compare``.
    """
    out = Path(out_dir)
    if not any(out.glob("*/seed*/report.json")):
        raise FileNotFoundError(f"table: no run with a report in {out}/<method>/seed<k>/ (run compare or pipeline first)")
    summary = summarize(out, reference, paired=paired, bootstrap_samples=bootstrap_samples,
                        by_task_type=by_task_type)
    atomic_write_json(out / "comparison.json", summary)
    atomic_write_text(out / "comparison.md", comparison_markdown(summary))
    plot_pareto(summary, out / "pareto.png")
    return {"table": str(out / "comparison.md"), "methods": list(summary["methods"])}


DEFAULT_PAIRS = [["prism-gini", "random"], ["prism-gini", "sft-100"], ["prism-gini", "sft-then-rl"]]


def _check_pairs(pairs: list[list[str]]) -> None:
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise ValueError(f"compare: paired: each entry is [A, B] (method or method:policy), got {pair!r}")


def _episode_outcomes(runs: list[str], by_task_type: bool = False
                      ) -> dict[str, dict[str, dict[int, dict[tuple, dict[str, float]]]]]:
    """``{policy: {split: {run seed: {goal: {"won", "score"}}}}}`` over a method's run dirs (``by_task_type``: with
    a ``<split>/<task type>`` split for every type as well)."""
    from prism_lit.pipeline.report import read_episodes

    out: dict[str, dict[str, dict[int, dict[tuple, dict[str, float]]]]] = {}
    for run in runs:
        seed = json.loads((Path(run) / "report.json").read_text()).get("seed")
        for (policy, split), cells in read_episodes(Path(run), by_task_type).items():
            out.setdefault(policy, {}).setdefault(split, {})[seed] = cells
    return out


def _side(name: str) -> tuple[str, str]:
    method, _, policy = name.partition(":")
    return method, policy or "final"


def _field(cells_by_seed: dict[int, dict[tuple, dict[str, float]]], name: str) -> dict[int, dict[tuple, float]]:
    return {s: {g: c[name] for g, c in cells.items() if name in c} for s, cells in cells_by_seed.items()}


def level_intervals(outcomes: dict[str, Any], bootstrap_samples: int = 10_000,
                    fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every evaluated policy's success rate and score (and ``fields``: the env's own rates) per split, with a
    95 % bootstrap interval over goals and seeds: ``{"name": "method" or "method:policy", "split", "success_rate",
    "score", ...}``."""
    from prism_lit.pipeline.report import OUTCOMES
    from prism_lit.pipeline.stats import bootstrap_mean

    rows = []
    for method, policies in outcomes.items():
        for policy in sorted(policies, key=lambda p: (p != "final", p)):
            for split, cells in sorted(policies[policy].items()):
                rows.append({"name": method if policy == "final" else f"{method}:{policy}", "split": split,
                             **{m: bootstrap_mean(_field(cells, f), n_boot=bootstrap_samples)
                                for m, f in (fields or OUTCOMES).items()}})
    return rows


def paired_differences(outcomes: dict[str, Any], pairs: list[list[str]],
                       bootstrap_samples: int = 10_000, fields: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every ``[A, B]`` pair's A − B per split and outcome (success, score and ``fields``), paired by goal and
    seed, with its 95 % interval (``outcomes``: :func:`_episode_outcomes` per method)."""
    from prism_lit.pipeline.report import OUTCOMES
    from prism_lit.pipeline.stats import paired_difference

    outcome_map = fields or OUTCOMES
    rows = []
    for a, b in pairs:
        (ma, pa), (mb, pb) = _side(a), _side(b)
        missing = [f"{m}:{p}" for m, p in ((ma, pa), (mb, pb)) if not outcomes.get(m, {}).get(p)]
        if missing:
            rows.append({"a": a, "b": b, "missing": f"no per-episode outcomes of {', '.join(missing)} in the table "
                         "(not run, or evaluated before eval/episodes.jsonl existed: --rerun '[eval]')"})
            continue
        for split in sorted(set(outcomes[ma][pa]) & set(outcomes[mb][pb])):
            left, right = outcomes[ma][pa][split], outcomes[mb][pb][split]
            row: dict[str, Any] = {"a": a, "b": b, "split": split}
            for metric, field_name in outcome_map.items():
                row[metric] = paired_difference(_field(left, field_name), _field(right, field_name),
                                                n_boot=bootstrap_samples)
            rows.append(row)
    return rows


def summarize(out: Path, reference: str, paired: list[list[str]] | None = None,
              bootstrap_samples: int = 10_000, by_task_type: bool = False) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every metric, per method; the paired differences of
    ``paired`` (default :data:`DEFAULT_PAIRS`) with their 95 % bootstrap intervals."""
    from prism_lit.pipeline.stats import mean_std

    methods: dict[str, dict[str, Any]] = {}
    envs: set[str] = set()
    for report_path in sorted(out.glob("*/seed*/report.json")):
        report = json.loads(report_path.read_text())
        method = report["method"]
        envs.add(str(report.get("env")))
        row = methods.setdefault(method, {"runs": [], "metrics": {}, "trained": False})
        row["runs"].append(str(report_path.parent))
        row["trained"] |= any((report.get("stages", {}).get(stage, {}).get("info") or {}).get("trained", True)
                              for stage in ("sft", "rl"))
        metrics: dict[str, float] = {}
        for split, m in next(iter(report["eval"].values()), {}).items():
            metrics[f"{split}/success_rate"] = m.get("success_rate")
            metrics[f"{split}/score"] = m.get("score")
            for name, value in (m.get("env_metrics") or {}).items():  # the env's own (IFEval's scores)
                if not name.startswith("n_"):
                    metrics[f"{split}/{name}"] = value
            for task_type, tm in (m.get("per_task_type") or {}).items():
                metrics[f"{split}/{task_type}/success_rate"] = tm.get("success_rate")
        for name, value in ((report.get("training") or {}).get("summary") or {}).items():
            metrics[f"rl/{name}"] = value  # the env's RL summary (e.g. the judge audit), a table of its own
        for stage, seconds in report["compute_seconds"].items():
            metrics[f"seconds/{stage}"] = seconds
        for key, value in metrics.items():
            row["metrics"].setdefault(key, []).append(value)
    for row in methods.values():
        row["metrics"] = {k: mean_std(v) for k, v in row["metrics"].items()}
        if by_task_type:
            row["routed_to_rl"] = _routed_to_rl(row["runs"])
    ref = methods.get(reference, {}).get("metrics", {}).get("seconds/total", {}).get("mean")
    for row in methods.values():
        total = row["metrics"].get("seconds/total", {}).get("mean")
        # a method that trains nothing (the base) has no speed-up to report
        row["speedup_vs_reference"] = (ref / total) if ref and total and row["trained"] else None
    pairs = DEFAULT_PAIRS if paired is None else paired
    _check_pairs(pairs)
    outcomes = {name: _episode_outcomes(row["runs"], by_task_type) for name, row in methods.items()}
    from prism_lit.pipeline.report import outcome_fields

    fields = outcome_fields(envs.pop() if len(envs) == 1 else None)  # the env's own rates get intervals too
    score_is_success = _score_is_success(outcomes)
    if score_is_success:  # ALFWorld: a score column would repeat the success column
        fields = {k: v for k, v in fields.items() if k != "score"}
        for row in methods.values():
            row["metrics"] = {k: v for k, v in row["metrics"].items() if not k.endswith("/score")}
    # a run still training (or stopped) has no report yet: the table says so instead of silently counting fewer runs
    unfinished = sorted(str(d) for d in out.glob("*/seed*") if d.is_dir() and not (d / "report.json").exists())
    return {"reference": reference, "methods": methods, "score_is_success": score_is_success, "unfinished": unfinished,
            "by_task_type": by_task_type,
            "levels": level_intervals(outcomes, bootstrap_samples, fields),
            "paired": paired_differences(outcomes, pairs, bootstrap_samples, fields) if pairs else []}


def _routed_to_rl(runs: list[str]) -> dict[str, dict[str, float]]:
    """Per task type, the share of the corpus's trajectories each run's partition sent to RL: min, mean and max
    over the runs whose partition (``probe/partition.json``) splits the corpus."""
    from prism_lit.pipeline.context import Artifacts
    from prism_lit.probe.partition import load_partition

    shares: dict[str, list[float]] = {}
    for run in runs:
        path = Artifacts(Path(run)).partition
        if not path.is_file():
            continue
        partition = load_partition(path)
        if not partition.rl_ids or not partition.sft_ids:  # all one way: no routing to show (RL-100, SFT-100)
            continue
        rl = set(partition.rl_ids)
        by_type: dict[str, list[bool]] = {}
        for traj_id, task_type in partition.task_type_of.items():
            by_type.setdefault(task_type, []).append(traj_id in rl)
        for task_type, routed in by_type.items():
            shares.setdefault(task_type, []).append(sum(routed) / len(routed))
    return {t: {"min": min(v), "mean": sum(v) / len(v), "max": max(v)} for t, v in shares.items()}


def task_type_markdown(table: dict[str, Any]) -> list[str]:
    """One row per method: each task type's success on each split (mean over runs) and the share of that type's
    corpus trajectories routed to RL, side by side."""
    methods = table["methods"]
    cells: dict[str, dict[str, dict[str, float]]] = {}  # type -> method -> split -> mean success
    splits: list[str] = []
    for name, row in methods.items():
        for key, stat in row["metrics"].items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "success_rate" and stat.get("mean") is not None:
                cells.setdefault(parts[1], {}).setdefault(name, {})[parts[0]] = stat["mean"]
                if parts[0] not in splits:
                    splits.append(parts[0])
    if not cells:
        return []
    types = sorted(cells)
    lines = ["", "## By task type", "", "| method | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for name, row in methods.items():
        out = []
        for t in types:
            by_split = cells[t].get(name, {})
            text = " / ".join(f"{by_split[s] * 100:.0f}" if s in by_split else "–" for s in splits)
            share = (row.get("routed_to_rl") or {}).get(t)
            if share is not None:
                low, high = round(share["min"] * 100), round(share["max"] * 100)
                text += f" ({low} % to RL)" if low == high else f" ({low}–{high} % to RL)"
            out.append(text)
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return lines + ["", f"Success in % ({' / '.join(splits)}), mean over each method's runs; in brackets the share of "
                        "the type's corpus trajectories its partition sent to RL (a range where runs differ), for "
                        "the methods whose partition splits the corpus."]


def _score_is_success(outcomes: dict[str, Any]) -> bool:
    """Whether every evaluated episode's score equals its win (an env whose score is its success)."""
    cells = [c for policies in outcomes.values() for splits in policies.values() for seeds in splits.values()
             for goals in seeds.values() for c in goals.values()]
    return bool(cells) and all(c.get("score") == c.get("won") for c in cells)


def _cell(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("std") is None:  # one seed: no spread to show
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def comparison_markdown(table: dict[str, Any]) -> str:
    methods = table["methods"]
    keys = sorted({k for row in methods.values() for k in row["metrics"]})
    quality = [k for k in keys if not k.startswith(("seconds/", "rl/"))]
    during_rl = [k for k in keys if k.startswith("rl/")]
    lines = ["| method | seeds | " + " | ".join(quality) + " | probe s | SFT s | RL s | total s | speed-up vs "
             f"{table['reference']} |", "|---" * (len(quality) + 7) + "|"]
    for name, row in methods.items():
        m = row["metrics"]
        cells = [_cell(m.get(k)) for k in quality]
        secs = [_cell(m.get(f"seconds/{s}"), 1.0, 0) for s in ("probe", "sft", "rl", "total")]
        speed = f"{row['speedup_vs_reference']:.2f}×" if row.get("speedup_vs_reference") else "–"
        lines.append(f"| {name} | {len(row['runs'])} | " + " | ".join(cells + secs + [speed]) + " |")
    n_seeds = max((len(r["runs"]) for r in methods.values()), default=0)
    lines += ["", (f"Success rates and scores in %, mean ± sample standard deviation (n − 1) over up to {n_seeds} "
                   "seed(s) (a single value has no ±); seconds of wall-clock per stage (probe + SFT + RL = total). "
                   "Two methods whose means differ by less than their ± are not told apart by this table; the "
                   "paired differences below are the test.")
              + (" The env's score equals its success on every episode, so no score column is shown."
                 if table.get("score_is_success") else "")]
    if table.get("unfinished"):
        lines += ["", f"Not in this table: {len(table['unfinished'])} run dir(s) without a report (still running, or "
                  "stopped: the same compare call, or `prism-lit pipeline --config <run dir>/pipeline_config.json`, "
                  "resumes one): " + ", ".join(f"`{d}`" for d in table["unfinished"]) + "."]
    if during_rl:
        lines += ["", "## During RL (the env's summary of each run's iterations)", "",
                  "| method | seeds | " + " | ".join(k[3:].replace("_", " ") for k in during_rl) + " |",
                  "|---" * (len(during_rl) + 2) + "|"]
        for name, row in methods.items():
            if any(row["metrics"].get(k) for k in during_rl):
                lines.append(f"| {name} | {len(row['runs'])} | "
                             + " | ".join(_cell(row["metrics"].get(k), 1.0, 3) for k in during_rl) + " |")
        lines += ["", "Mean ± sample standard deviation over seeds of each run's value."]
    if table.get("by_task_type"):
        lines += task_type_markdown(table)
    lines += levels_markdown(table.get("levels") or [])
    lines += paired_markdown(table.get("paired") or [])
    return "\n".join(lines) + "\n"


def _interval(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "–"
    lo, hi = stat["ci"]
    verdict = "" if lo <= 0.0 <= hi else " *"
    return f"{stat['mean'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]{verdict}"


_ROW_KEYS = ("name", "split", "a", "b", "missing")


def _outcome_columns(rows: list[dict[str, Any]], unit: str) -> tuple[list[str], list[str]]:
    """The outcomes of the rows (success, score, then the env's own rates) and their column labels."""
    metrics = [k for k in rows[0] if k not in _ROW_KEYS]
    labels = {"success_rate": f"success ({'%' if unit == '%' else 'points'})",
              "score": f"score ({'×100' if unit == '%' else 'points'})"}
    return metrics, [labels.get(m, f"{m.replace('_', ' ')} ({unit})") for m in metrics]


def _level(m: dict[str, Any]) -> str:
    return "–" if m.get("mean") is None else f"{m['mean'] * 100:.1f} [{m['ci'][0] * 100:.1f}, {m['ci'][1] * 100:.1f}]"


def _by_run(rows: list[dict[str, Any]]) -> bool:
    """Whether the tables get a per-run column: some row pools more than one run."""
    return any(r.get("success_rate", {}).get("n_seeds", 0) > 1 for r in rows)


def _runs_cell(stat: dict[str, Any], signed: bool) -> str:
    """Each run's value of a pooled success rate or difference, in seed order ("+5.0 / -2.0 / +3.0")."""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return " / ".join(fmt.format(m * 100) for _, m in stat.get("by_seed", [])) or "–"


def levels_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    metrics, labels = _outcome_columns(rows, "%")
    by_run = _by_run(rows)
    extra = ["success by run (%)"] if by_run else []
    lines = ["", "## Success and score with 95 % intervals", "",
             "| policy | split | seeds | goals | " + " | ".join(labels + extra) + " |",
             "|---" * (len(metrics) + len(extra) + 4) + "|"]
    for row in rows:
        s = row["success_rate"]
        cells = [_level(row[m]) for m in metrics] + ([_runs_cell(s, signed=False)] if by_run else [])
        lines.append(f"| {row['name']} | {row['split']} | {s['n_seeds']} | {s['n_goals']} | " + " | ".join(cells) + " |")
    note = " \"Success by run\": each run's own rate, in seed order." if by_run else ""
    return lines + ["", "From `eval/episodes.jsonl` of every run; the interval resamples seeds and goals." + note]


def paired_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    present = [r for r in rows if "missing" not in r]
    metrics, labels = (_outcome_columns(present, "points") if present
                       else (["success_rate", "score"], ["success (points)", "score (points)"]))
    by_run = _by_run(present)
    extra = ["success by run (points)"] if by_run else []
    lines = ["", "## Paired differences", "",
             "| A − B | split | seeds | goals | " + " | ".join(labels + extra) + " |",
             "|---" * (len(metrics) + len(extra) + 4) + "|"]
    notes = []
    for row in rows:
        if "missing" in row:
            notes.append(f"- {row['a']} − {row['b']}: {row['missing']}")
            continue
        s = row["success_rate"]
        cells = [_interval(row[m]) for m in metrics] + ([_runs_cell(s, signed=True)] if by_run else [])
        lines.append(f"| {row['a']} − {row['b']} | {row['split']} | {s['n_seeds']} | {s['n_goals']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Mean of A − B over the (seed, goal) pairs both have, with a 95 % percentile interval from a "
                  "bootstrap that resamples seeds and goals (seeded, so it repeats); * = the interval excludes 0. "
                  "A name alone is the method's final policy; method:policy names another policy of its runs."
                  + (" \"Success by run\": A − B within each run, in seed order: whether the runs agree." if by_run else "")]
    return lines + ([""] + notes if notes else [])


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
    error bars = sample std)."""
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
            yerr = None if stat["std"] is None else stat["std"] * 100  # one seed: no error bar
            ax.errorbar(total["mean"], stat["mean"] * 100, xerr=total["std"], yerr=yerr, fmt="o", capsize=3)
            points.append((name, total["mean"], stat["mean"] * 100))
        ax.set_xlabel("training wall-clock, probe + SFT + RL (s)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} vs compute")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)  # room for the labels of the rightmost points
        fig.tight_layout()
        _place_labels(ax, points)
    save_figure(fig, out)
