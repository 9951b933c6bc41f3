"""The paper's recipe (configs/paper/) at a scaled-down size: the same config file, with a tiny Qwen3ForCausalLM
carrying Qwen3's original template in place of Qwen3-8B, a generated catalogue in place of upstream's files, CPU in
place of 8 GPUs and a few tasks; every other setting (the reply format, the Gini median split, GRPO with KL,
the invalid-action penalty, LoRA SFT) is the paper config's own."""

from __future__ import annotations

import json

import pytest

from prism_lit.cli import main


@pytest.mark.slow
def test_the_paper_recipe_runs_end_to_end_on_a_tiny_qwen3(tiny_model_dirs, tmp_path):
    run = tmp_path / "run"
    main(["pipeline", "--config", "configs/paper/pipeline_qwen3_8b_webshop.yaml", f"--run_dir={run}",
          f"--base.path={tiny_model_dirs('qwen3')}", "--base.dtype=float32", "--base.gradient_checkpointing=false",
          '--env.kwargs={"num_products": 60, "results_per_page": 3}', '--env.eval_splits={"test": 2}',
          "--probe.corpus_tasks=6", "--probe.max_tokens=100000", "--sft.epochs=1", "--sft.batch_size=2",
          "--sft.max_tokens=100000", "--rl.max_steps=1", "--rl.data.tasks_per_batch=1",
          "--rl.module.init_args.group_size=2", "--rl.module.init_args.rollout.max_new_tokens=8",
          "--rl.module.init_args.rollout.max_steps=2", "--rl.module.init_args.rollout.generation_batch_size=4",
          '--eval={"policies": ["final"], "max_steps": 2, "batch_size": 2, "max_new_tokens": 8}',
          '--trainer={"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": false}'])
    config = json.loads((run / "pipeline_config.json").read_text())
    module = config["rl"]["module"]["init_args"]
    assert (module["kl"]["coef"], module["optim"]["lr"], module["rollout"]["invalid_action_penalty"]) == (0.01, 1e-6, 0.1)
    assert config["env"]["protocol"]["reply_format"] == "think_tags"
    assert config["base"]["chat_template_kwargs"] == {"enable_thinking": True}
    partition = json.loads((run / "probe" / "partition.json").read_text())
    assert partition["router"] == "prism" and len(partition["rl_ids"]) == 3  # the median split of 6
    report = json.loads((run / "report.json").read_text())
    assert report["eval"]["webshop"]["test"]["episodes"] == 2
    assert (run / "sft" / "export" / "adapter_config.json").is_file()  # LoRA, as the recipe says
