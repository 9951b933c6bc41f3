"""The pipeline on the instruction-following env at a tiny size (real env, real embedded model): IFEval's scores
per evaluation panel, the judge audit during RL, precision-first routing, and the report sections that show them."""

import json

import pytest

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.pipeline.config import (
    BaseModelSettings,
    EnvSettings,
    EvalSettings,
    ProbeSettings,
    RLSettings,
    SFTSettings,
)
from prism_lit.pipeline.run import pipeline
from prism_lit.policy import EmbeddedModelSpec

IFEVAL_SCORES = {"prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"}


def _settings(tmp_path, router, rl_env_kwargs):
    return {
        "run_dir": str(tmp_path / "run"),
        "method": "grpo-precision",
        "env": EnvSettings(id="instruction_following", kwargs={"n_tasks": 200, "max_constraints": 2},
                           protocol=AgentProtocol(env="instruction_following", reply_format="text", history_turns=0,
                                                  show_admissible=False),
                           eval_splits={"test_seen": 3, "test_unseen": 3}),
        "base": BaseModelSettings(embedded=EmbeddedModelSpec(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, num_key_value_heads=2,
                                                             intermediate_size=64),
                                  pretrain_tasks=6, pretrain_epochs=1),
        "probe": ProbeSettings(corpus_tasks=10, router=router),
        "sft": SFTSettings(enabled=False),
        "rl": RLSettings(module={"class_path": "prism_lit.rl.GRPOModule",
                                 "init_args": {"group_size": 2, "rollout": {"max_new_tokens": 12, "max_steps": 1}}},
                         data={"tasks_per_batch": 2}, max_steps=2, env_kwargs=rl_env_kwargs),
        "eval": EvalSettings(policies=["base", "final"], max_steps=1, batch_size=6, max_new_tokens=12),
        "trainer": {"enable_progress_bar": False},
    }


def test_if_pipeline_reports_ifeval_scores_judge_audit_and_routes_by_reward_precision(tmp_path):
    router = {"class_path": "prism_lit.probe.routers.VerifiedRewardRouter", "init_args": {"unverified": "drop"}}
    run = tmp_path / "study" / "grpo-precision" / "seed0"
    pipeline(**{**_settings(tmp_path, router, {"soft_fraction": 0.5, "audit_judge": True}), "run_dir": str(run)})

    # precision-first routing: RL keeps only the tasks whose reward the (RL) env checks by code
    partition = json.loads((run / "probe" / "partition.json").read_text())
    import gymnasium as gym

    import prism_lit.envs  # noqa: F401

    env = gym.make("prism_lit/InstructionFollowing-v0", split="train", n_tasks=200, max_constraints=2,
                   soft_fraction=0.5)
    corpus = [json.loads(line)["task_id"] for line in (run / "tasks" / "corpus.jsonl").read_text().splitlines()]
    soft = {t for t in corpus if env.reset(options={"task_id": t})[1]["task_families"].endswith("soft")}
    assert soft and len(soft) < len(corpus)  # the draw has both kinds
    assert set(partition["task_of"][i] for i in partition["rl_ids"]) == set(corpus) - soft
    assert partition["sft_ids"] == [] and partition["router"] == "verified_reward"

    # eval: IFEval's four scores per panel, per-episode outcomes, intervals for the prompt-level rates
    results = json.loads((run / "eval" / "eval.json").read_text())
    for policy in ("base", "final"):
        for split in ("test_seen", "test_unseen"):
            m = results[policy][split]
            assert IFEVAL_SCORES <= set(m["env_metrics"]) and m["env_metrics"]["n_prompts"] == 3
            # on these hard-only panels IFEval's prompt-level strict accuracy is the env's success
            assert m["env_metrics"]["prompt_level_strict"] == m["success_rate"]
    episodes = [json.loads(line) for line in (run / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert all(ep["outcomes"]["prompt_level_strict"] == float(ep["won"]) for ep in episodes)
    report = json.loads((run / "report.json").read_text())
    assert "prompt_level_loose" in report["eval_intervals"]["test_unseen"]["policies"]["final"]
    assert "prompt_level_loose" in report["eval_intervals"]["test_unseen"]["differences"]["final - base"]

    # RL: the judge audit on the policy's own responses, logged per iteration and summarised
    rows = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("env/judge_audited" in r and "env/reward_judged_share" in r for r in rows)
    assert all(r["env/unverified_tasks"] == 0.0 for r in rows)  # the router kept verified tasks only
    assert set(report["training"]["env"]) >= {"judge_audited", "judge_false_pass_rate", "reward_judged_share"}
    summary = (run / "summary.md").read_text()
    assert "## Environment metrics" in summary and "prompt level loose" in summary
    assert "| env/judge_false_pass_rate |" in summary and "## During RL (2 iterations" in summary
    pooled = report["training"]["summary"]  # the audit pooled over iterations: each constraint counts once
    assert pooled["judge_audited"] == sum(r["env/judge_audited"] for r in rows)
    wrong = sum(r["env/judge_pass_wrong"] for r in rows)
    assert pooled["judge_false_pass_rate"] == wrong / (pooled["judge_audited"] - sum(r["env/code_pass"] for r in rows))

    # compare's table over such runs: IFEval's scores per split, prompt-level intervals, the RL summary
    from prism_lit.pipeline.compare import comparison_markdown, summarize

    table = summarize(tmp_path / "study", "grpo-precision", paired=[["grpo-precision", "grpo-precision:base"]],
                      bootstrap_samples=200)
    metrics = table["methods"]["grpo-precision"]["metrics"]
    assert {"test_seen/instruction_level_loose", "test_unseen/prompt_level_loose", "rl/judge_precision"} <= set(metrics)
    assert {"prompt_level_strict", "prompt_level_loose"} <= set(table["levels"][0])
    md = comparison_markdown(table)
    assert "## During RL" in md and "prompt level loose (points)" in md and "prompt level loose (%)" in md


def test_mixed_rl_env_kwargs_reach_rl_only_and_the_hard_arm_shares_the_corpus(tmp_path):
    """rl.env_kwargs change what RL plays (soft constraints, judge-paid reward) without touching the corpus, the
    base or the evaluation panels: the tasks stage's settings are the same for both arms."""
    from prism_lit.pipeline.context import PipelineContext
    from prism_lit.pipeline.run import _compare_settings, stage_settings

    all_rl = {"class_path": "prism_lit.probe.routers.AllRLRouter", "init_args": {}}
    hard = _settings(tmp_path, all_rl, {"audit_judge": True})
    mixed = _settings(tmp_path, all_rl, {"soft_fraction": 1.0, "audit_judge": True})

    def ctx(s):
        return PipelineContext(run_dir=tmp_path, env=s["env"], base=s["base"], probe=s["probe"], sft=s["sft"],
                               rl=s["rl"], eval=s["eval"], seed=0, trainer={}, method="m")

    assert stage_settings(ctx(hard), "tasks") == stage_settings(ctx(mixed), "tasks")
    assert stage_settings(ctx(hard), "rl") != stage_settings(ctx(mixed), "rl")
    # an RL marker written before rl.env_kwargs existed still matches a config that leaves it empty
    plain = ctx(_settings(tmp_path, all_rl, {}))
    recorded = stage_settings(plain, "rl")
    del recorded["rl"]["env_kwargs"]
    _compare_settings(plain, "rl", recorded, finished=True)
    with pytest.raises(ValueError, match="rl.env_kwargs.soft_fraction"):
        _compare_settings(ctx(mixed), "rl", recorded, finished=True)
    pipeline(**mixed, stop_after="rl")
    rows = [json.loads(line) for line in (tmp_path / "run" / "rl" / "metrics.jsonl").read_text().splitlines()]
    # every RL task carries a judge-scored constraint here, so part of the reward is the judge's
    assert all(r["env/unverified_tasks"] == 1.0 for r in rows)
    assert any(r["env/reward_judged_share"] > 0.0 for r in rows) or all(r["rollout/return"] == 0.0 for r in rows)
