"""``prism-lit import agentgym|eto``: items mapped to env task ids (WebShop by instruction, ALFWorld by game path),
replayed through the protocol or kept verbatim, unmappable items reported with the reason; then an RL iteration on
the imported tasks. Fixtures (tests/fixtures/import/) follow the formats as AgentGym's AgentTraj and ETO publish
them; their WebShop goals are those of the generated 60-product catalogue, their ALFWorld games the shared
reference games."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prism_lit.cli import main
from prism_lit.data.importers import import_corpus, parse_reply
from prism_lit.data.schema import read_trajectories

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "import"
WEBSHOP = {"num_products": 60}
REFERENCE = Path(os.environ.get("PRISM_LIT_ALFWORLD_REFERENCE",
                                Path(__file__).resolve().parents[3] / "shared" / "reference" / "alfworld"))


def test_reply_parsing_reads_eto_and_agentgym_replies():
    assert parse_reply("Thought: I need a sofa.\n\nAction: search[black sofa]") == ("I need a sofa.",
                                                                                   "search[black sofa]")
    assert parse_reply("Thought: go.\nAction: click[b0x] \n") == ("go.", "click[b0x]")
    assert parse_reply("OK") == (None, None)


def test_agentgym_webshop_import_maps_replays_and_reports(tmp_path, capsys):
    out = tmp_path / "agentgym.jsonl"
    main(["import", "agentgym", str(FIXTURES / "agentgym_webshop.json"), str(out), "--env", "webshop",
          "--env_kwargs", json.dumps(WEBSHOP)])
    printed = capsys.readouterr().out
    report = json.loads(Path(f"{out}.import_report.json").read_text())
    assert (report["read"], report["written"], report["mode"]) == (4, 2, "replay")
    reasons = {u["id"]: u["reason"] for u in report["unmapped"]}
    assert "is not among the env's 120 goals" in reasons["webshop_9001"]
    assert "replay: action 1 'click[no such button]' is not valid" in reasons["webshop_115"]
    assert "not imported: webshop_9001" in printed
    trajectories = read_trajectories(out)
    assert [t.task_id for t in trajectories] == ["webshop/train/101", "webshop/train/40"]
    for t in trajectories:
        assert t.won and t.meta["source_id"] == t.id
        assert t.messages[0].role == "system"  # the protocol's own system prompt replaces the "OK" preamble
        assert all(m.content.startswith("Thought: ") for m in t.messages if m.role == "assistant")
        assert "Admissible actions:" in t.messages[3].content  # rendered as the RL stage's protocol shows it

    verbatim = import_corpus("agentgym", str(FIXTURES / "agentgym_webshop.json"), str(tmp_path / "v.jsonl"),
                             "webshop", WEBSHOP, verbatim=True)
    assert (verbatim.written, [u["id"] for u in verbatim.unmapped]) == (3, ["webshop_9001"])
    kept = read_trajectories(tmp_path / "v.jsonl")
    assert kept[0].messages[1].content == "OK" and kept[0].task_id == "webshop/train/101"


def test_eto_webshop_import_keeps_the_rewards_it_reproduces(tmp_path):
    report = import_corpus("eto", str(FIXTURES / "eto_webshop.jsonl"), str(tmp_path / "eto.jsonl"), "webshop",
                           WEBSHOP)
    assert (report.written, report.unmapped) == (2, [])
    for t in read_trajectories(tmp_path / "eto.jsonl"):
        assert t.meta["source_reward"] == t.meta["replay_reward"] == t.reward == 1.0


def test_an_rl_iteration_on_imported_tasks(tiny_model_dirs, tmp_path):
    """The RL stage replays the imported task ids: one GRPO iteration of a tiny Qwen3 on them."""
    import lightning as L

    from prism_lit.rl import GRPOModule, RLTaskDataModule

    import_corpus("eto", str(FIXTURES / "eto_webshop.jsonl"), str(tmp_path / "eto.jsonl"), "webshop", WEBSHOP)
    tasks = sorted({t.task_id for t in read_trajectories(tmp_path / "eto.jsonl")})
    module = GRPOModule(
        policy={"path": str(tiny_model_dirs("qwen3")), "chat_template_kwargs": {"enable_thinking": False}},
        protocol={"env": "webshop", "reply_format": "thought_action", "history_turns": 2},
        env_id="prism_lit/WebShop-v0", env_kwargs={**WEBSHOP, "split": "train"},
        rollout={"max_new_tokens": 6, "max_steps": 2}, group_size=2, optim={"lr": 1e-4},
        update={"micro_batch_size": 8}, export_dir=str(tmp_path / "export"),
    )
    data = RLTaskDataModule(env_id="prism_lit/WebShop-v0", env_kwargs={**WEBSHOP, "split": "train"}, task_ids=tasks,
                            tasks_per_batch=2, eval_panels=[])
    trainer = L.Trainer(accelerator="cpu", max_steps=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.global_step == 1
    assert (tmp_path / "export").is_dir()


@pytest.mark.alfworld
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference games not present at {REFERENCE}")
def test_alfworld_imports_map_game_paths_and_translate_the_old_grammar(tmp_path):
    env_kwargs = {"data_dir": str(REFERENCE / "tiny_games" / "grammar_v0.4.2")}
    eto = import_corpus("eto", str(FIXTURES / "eto_alfworld.json"), str(tmp_path / "eto.jsonl"), "alfworld",
                        env_kwargs)
    assert eto.written == 1
    assert "is not among the env's 6 games" in eto.unmapped[0]["reason"]
    [t] = read_trajectories(tmp_path / "eto.jsonl")
    assert t.task_id == "alfworld/train/pick_and_place_simple-Mug-None-Cabinet-1/trial_T00000000_000000_000001"
    assert t.won and "Action: move mug 1 to cabinet 1" in t.messages[-1].content  # 0.3.3 "put X in/on Y"
    agentgym = import_corpus("agentgym", str(FIXTURES / "agentgym_alfworld.json"), str(tmp_path / "ag.jsonl"),
                             "alfworld", env_kwargs, mapping=str(FIXTURES / "agentgym_alfworld_mapping.json"))
    assert agentgym.written == 1 and agentgym.unmapped[0]["id"] == "alfworld_7"
    assert "no game file for item 'alfworld_7'" in agentgym.unmapped[0]["reason"]
    assert read_trajectories(tmp_path / "ag.jsonl")[0].task_type == "pick_heat_then_place_in_recep"
