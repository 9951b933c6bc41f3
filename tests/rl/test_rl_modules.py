"""The RL LightningModules: first-update ratio, LoRA reference policy, kill-and-resume, evaluation, export."""

import glob

import lightning.pytorch as pl
import pytest
import torch

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.policy import LoraSpec, PolicySpec, load_policy
from prism_lit.rl import (
    EvalPanel,
    GRPOModule,
    PPOModule,
    RLTaskDataModule,
    RolloutConfig,
    evaluate_policy,
)
from prism_lit.rl.rollout import make_env

TASKS = [f"guess_word/train/{i}" for i in range(8)]
ONE_TRY = {"max_attempts": 1}  # one-step episodes keep these tests fast


def _trainer(tmp_path, max_steps, callbacks=(), logger=False, **kwargs):
    return pl.Trainer(max_steps=max_steps, logger=logger, enable_checkpointing=bool(
        [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]), callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, **kwargs)


def _grpo(policy_dir, protocol, **kwargs):
    args = {"policy": PolicySpec(path=str(policy_dir)), "protocol": protocol, "env_id": GUESS_WORD_ID,
                "rollout": RolloutConfig(max_new_tokens=2), "group_size": 4, "optim": {"lr": 1e-2},
                "update": {"micro_batch_size": 16}, "skip_zero_advantage": False, "entropy_coef": 0.01}
    args.update(kwargs)
    return GRPOModule(**args)


class Record(pl.Callback):
    def __init__(self):
        self.batches, self.metrics = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append((batch["epoch"], batch["index"], tuple(batch["task_ids"])))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _trainable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_first_update_sees_ratio_one_and_training_changes_the_policy(tmp_path, gw_policy_dir, gw_protocol):
    module = _grpo(gw_policy_dir, gw_protocol, update={"epochs": 1, "micro_batch_size": 16})  # one optimizer step: only the first ratio
    rec = Record()
    module.configure_model()
    before = _trainable(module)
    _trainer(tmp_path, max_steps=1, callbacks=[rec]).fit(module, RLTaskDataModule(GUESS_WORD_ID, tasks_per_batch=4))
    m = rec.metrics[0]
    assert m["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["train/approx_kl"] == pytest.approx(0.0, abs=1e-6) and m["train/clipfrac"] == 0.0
    assert m["train/samples"] >= 16 and m["rollout/steps"] >= 1  # 4 tasks x G=4, every step kept
    assert 0.0 <= m["rollout/success"] <= 1.0 and m["perf/generated_tokens_per_s"] > 0
    after = _trainable(module)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_kill_and_resume_continues_the_same_run(tmp_path, gw_policy_dir, gw_protocol):
    dm_args = {"env_id": GUESS_WORD_ID, "env_kwargs": ONE_TRY, "tasks_per_batch": 3, "seed": 7}  # 3 batches per epoch
    # the reference: 4 uninterrupted iterations (crossing an epoch boundary)
    ref_rec = Record()
    ref = _grpo(gw_policy_dir, gw_protocol, env_kwargs=ONE_TRY)
    _trainer(tmp_path / "a", max_steps=4, callbacks=[ref_rec]).fit(ref, RLTaskDataModule(**dm_args))
    # killed after 2 iterations (mid-epoch) ...
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = _grpo(gw_policy_dir, gw_protocol, env_kwargs=ONE_TRY)
    _trainer(tmp_path / "b", max_steps=2, callbacks=[ckpt]).fit(first, RLTaskDataModule(**dm_args))
    (path,) = glob.glob(str(tmp_path / "ckpt" / "*step=2.ckpt"))
    # ... and resumed in a fresh process state
    torch.manual_seed(12345)
    rec = Record()
    resumed = _grpo(gw_policy_dir, gw_protocol, env_kwargs=ONE_TRY)
    _trainer(tmp_path / "c", max_steps=4, callbacks=[rec]).fit(resumed, RLTaskDataModule(**dm_args), ckpt_path=path)
    assert rec.batches == ref_rec.batches[2:]  # the task stream continues where it stopped
    assert resumed.iteration == ref.iteration == 4
    ref_w, res_w = _trainable(ref), _trainable(resumed)
    for k in ref_w:
        assert torch.allclose(ref_w[k], res_w[k], atol=1e-6), k
    for a, b in zip(ref_rec.metrics[2:], rec.metrics):
        assert a["rollout/return"] == pytest.approx(b["rollout/return"])


def test_lora_reference_is_the_base_model_and_checkpoints_hold_only_the_adapter(tmp_path, gw_policy_dir,
                                                                                 gw_protocol):
    module = _grpo(gw_policy_dir, gw_protocol, policy=PolicySpec(path=str(gw_policy_dir), lora=LoraSpec(r=4)),
                   kl={"coef": 0.1}, optim={"lr": 5e-2}, env_kwargs=ONE_TRY)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    rec = Record()
    _trainer(tmp_path, max_steps=2, callbacks=[ckpt, rec]).fit(
        module, RLTaskDataModule(GUESS_WORD_ID, env_kwargs=ONE_TRY, tasks_per_batch=2))
    assert module.ref_model is None  # no second copy of the model
    assert rec.metrics[-1]["train/kl"] > 0  # the adapter moved away from the base
    base, tok = load_policy(PolicySpec(path=str(gw_policy_dir)))
    from prism_lit.rl.scoring import StepSample, collate_steps, policy_forward

    prompt = tok("<|im_start|> user Guess the word . Clue: pet that barks <|im_end|> <|im_start|> assistant")
    batch = collate_steps([StepSample(prompt["input_ids"], [tok.convert_tokens_to_ids("dog")], [0.0])],
                          tok.pad_token_id)
    with torch.no_grad():
        expected = policy_forward(base.eval(), batch).logprobs
        trained = policy_forward(module.model, batch).logprobs
    assert torch.allclose(module.reference_logprobs(batch, 1.0), expected, atol=1e-6)
    assert not torch.allclose(trained, expected, atol=1e-4)
    (path,) = glob.glob(str(tmp_path / "ckpt" / "*.ckpt"))
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


def test_validation_logs_panel_metrics_and_a_text_table(tmp_path, gw_policy_dir, gw_protocol):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = _grpo(gw_policy_dir, gw_protocol)
    dm = RLTaskDataModule(GUESS_WORD_ID, eval_panels=[EvalPanel("valid", {"split": "valid"}, num_tasks=4)],
                          eval_batch_size=4)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (metrics,) = trainer.validate(module, dm)
    assert metrics["val/valid/episodes"] == 4
    for key in ("success_rate", "mean_score", "mean_steps", "invalid_action_rate"):
        assert 0 <= metrics[f"val/valid/{key}"] <= 3
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    assert "val/valid/episodes/text_summary" in acc.Tags()["tensors"]
    again = trainer.validate(module, dm)[0]
    assert again == metrics  # same panel, same seeds, greedy: the same numbers


def test_evaluate_policy_matches_a_hand_played_greedy_loop(gw_policy_dir, gw_protocol):
    model, tok = load_policy(PolicySpec(path=str(gw_policy_dir)))
    model.eval()
    seeds = [3, 4, 5, 6]
    result = evaluate_policy(model, tok, gw_protocol, GUESS_WORD_ID, {}, TASKS[:4], seeds, max_new_tokens=2,
                             batch_size=3)
    won, steps = 0, 0
    from prism_lit.envs.protocol import Turn

    for task, seed in zip(TASKS[:4], seeds):  # oracle: HF generate, one episode at a time
        env = make_env(GUESS_WORD_ID)
        obs, info = env.reset(seed=seed, options={"task_id": task})
        turns, done = [], False
        while not done:
            current = gw_protocol.render_observation(obs, info["admissible_actions"])
            ids = tok.apply_chat_template(gw_protocol.build_messages(turns, current), add_generation_prompt=True,
                                          tokenize=True, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=2, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            reply = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            obs, _, term, trunc, info = env.step(gw_protocol.parse_action(reply) or reply)
            turns.append(Turn(current, reply))
            steps += 1
            done = term or trunc
        won += info["won"]
    assert result["episodes"] == 4
    assert result["success_rate"] == pytest.approx(won / 4)
    assert result["mean_steps"] == pytest.approx(steps / 4)


def test_ppo_trains_a_value_head_resumes_and_exports(tmp_path, gw_policy_dir, gw_protocol):
    from rl_helpers import guess_word_protocol

    # the word-level policy cannot write "Action: ...": every reply is penalised, so returns are non-zero
    args = {"policy": PolicySpec(path=str(gw_policy_dir)), "protocol": guess_word_protocol(reply_format="action"),
                "env_id": GUESS_WORD_ID, "env_kwargs": ONE_TRY, "rollout": RolloutConfig(max_new_tokens=2),
            "group_size": 2, "optim": {"lr": 1e-2}, "value_lr": 1e-1,
            "update": {"epochs": 2, "num_minibatches": 2, "micro_batch_size": 8}, "export_dir": str(tmp_path / "export")}
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    rec = Record()
    module = PPOModule(**args)
    _trainer(tmp_path, max_steps=4, callbacks=[ckpt, rec]).fit(
        module, RLTaskDataModule(GUESS_WORD_ID, env_kwargs=ONE_TRY, tasks_per_batch=4))
    assert module.iteration == 1 and rec.metrics[0]["train/value_loss"] > 0
    assert rec.metrics[0]["rollout/return"] == pytest.approx(-0.1) and rec.metrics[0]["rollout/invalid_rate"] == 1
    assert float(module.value_head.weight.detach().abs().sum()) > 0  # the value head learned something
    exported, _ = load_policy(PolicySpec(path=str(tmp_path / "export")))
    for (n, p), q in zip(module.model.named_parameters(), exported.parameters()):
        assert torch.equal(p, q), n
    head = torch.load(tmp_path / "export" / "value_head.pt")
    assert torch.equal(head["weight"], module.value_head.weight.detach())
    (path,) = glob.glob(str(tmp_path / "ckpt" / "*.ckpt"))
    resumed = PPOModule(**{**args, "export_dir": None})
    _trainer(tmp_path / "r", max_steps=8).fit(
        resumed, RLTaskDataModule(GUESS_WORD_ID, env_kwargs=ONE_TRY, tasks_per_batch=4), ckpt_path=path)
    assert resumed.iteration == 2


def test_fsdp1_strategy_is_refused_with_the_supported_alternatives(gw_policy_dir, gw_protocol):
    """FSDPStrategy (FSDP1) would all-gather inside rollouts whose forward counts differ per rank (a hang): the RL
    modules refuse it when they build the model and name FSDP2Strategy."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    module = _grpo(gw_policy_dir, gw_protocol)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="FSDP2Strategy"):
        module.configure_model()
    assert module.model is None
