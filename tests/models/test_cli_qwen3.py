"""The paper's backbone through the CLI: a tiny Qwen3ForCausalLM with Qwen3's original chat template runs the
shipped probe config and a LoRA SFT config (non-thinking mode set once on the policy), on a generated WebShop
corpus; the exported policy keeps the template setting; then GRPO from the SFT adapter with a greedy evaluation,
through the same CLI. (Issue 19: this failed in tokenisation before.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prism_lit.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_probe_sft_rl_eval_of_a_tiny_qwen3_through_the_cli(tiny_model_dirs, tmp_path):
    qwen3 = str(tiny_model_dirs("qwen3"))
    corpus = tmp_path / "corpus.jsonl"
    main(["generate", "webshop", str(corpus), "--n_tasks", "6", "--env_kwargs", '{"num_products": 60}'])
    protocol = {"env": "webshop", "history_turns": 2}

    probe = yaml.safe_load((CONFIGS / "probe_webshop_embedded.yaml").read_text())
    probe["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    probe["trainer"]["callbacks"] = [c for c in probe["trainer"]["callbacks"] if "ProgressBar" not in c["class_path"]]
    probe["trainer"]["enable_progress_bar"] = False
    probe["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "probe")
    probe["model"]["init_args"]["policy"] = {"path": qwen3, "chat_template_kwargs": {"enable_thinking": False}}
    probe["data"]["init_args"].update(train_files=[str(corpus)], batch_size=4, protocol=protocol)
    main(["fit", "--config", _write(tmp_path / "probe.yaml", probe)])
    partition = json.loads((tmp_path / "probe" / "partition.json").read_text())
    assert sorted(partition["sft_ids"] + partition["rl_ids"]) == [f"webshop-train-{i:05d}" for i in range(6)]

    sft = yaml.safe_load((CONFIGS / "sft_webshop_embedded.yaml").read_text())
    sft["trainer"].update(max_epochs=1, enable_progress_bar=False, default_root_dir=str(tmp_path / "sft"))
    sft["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    sft["model"]["init_args"]["policy"] = {"path": qwen3, "lora": {"r": 4, "alpha": 8},
                                           "chat_template_kwargs": {"enable_thinking": False}}
    sft["model"]["init_args"]["export_dir"] = str(tmp_path / "export")
    sft["data"]["init_args"].update(train_files=[str(corpus)], batch_size=4, val_fraction=0.0, expert_data=None,
                                    protocol=protocol, partition_path=str(tmp_path / "probe" / "partition.json"))
    main(["fit", "--config", _write(tmp_path / "sft.yaml", sft)])
    exported = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    template = exported.get("chat_template") or (tmp_path / "export" / "chat_template.jinja").read_text()
    assert "set enable_thinking = false" in template
    assert (tmp_path / "export" / "adapter_config.json").is_file()

    rl = yaml.safe_load((CONFIGS / "rl_grpo_webshop.yaml").read_text())
    rl["trainer"].update(max_steps=1, val_check_interval=1, enable_progress_bar=False,
                         default_root_dir=str(tmp_path / "rl"), callbacks=[])
    rl["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    init = rl["model"]["init_args"]
    # a LoRA run loads the base's tokenizer, so the template setting is given again
    init["policy"] = {"path": qwen3, "adapter_path": str(tmp_path / "export"),
                      "chat_template_kwargs": {"enable_thinking": False}}
    init.update(protocol=protocol, env_kwargs={"num_products": 60, "split": "train"}, group_size=2,
                export_dir=str(tmp_path / "rl_export"))
    init["update"]["micro_batch_size"] = 8
    init["rollout"].update(max_new_tokens=6, max_steps=2)
    rl["data"]["init_args"].update(env_kwargs={"num_products": 60, "split": "train"}, tasks_per_batch=2,
                                   partition_path=str(tmp_path / "probe" / "partition.json"), eval_batch_size=2,
                                   eval_panels=[{"name": "test", "env_kwargs": {"split": "test"}, "num_tasks": 2}])
    main(["fit", "--config", _write(tmp_path / "rl.yaml", rl)])
    assert (tmp_path / "rl_export" / "adapter_config.json").is_file()
    events = b"".join(p.read_bytes() for p in (tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert b"val/test/success_rate" in events  # the greedy evaluation on the test panel ran
