"""The RL iteration's extension points: a new algorithm written in this file and run through ``prism-lit fit``,
the zero-advantage denominator, the advantage-estimator registry, and the deprecated ``ReinforceModule`` alias."""

import csv
import inspect

import pytest
import torch
import yaml

from prism_lit.envs.guess_word import GUESS_WORD_ID
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec, load_policy
from prism_lit.rl import RLModuleBase, StepSample


class MovingAverageReinforce(RLModuleBase):
    """Plain REINFORCE: ``A = R - b`` with ``b`` an exponential moving average of past mean returns,
    ``L = -agg(A log pi(a|s))`` (no ratio, no clipping)."""

    def __init__(self, policy: PolicySpec, protocol: AgentProtocol, env_id: str, env_kwargs: dict | None = None,
                 baseline_decay: float = 0.9, **kwargs):
        super().__init__(policy, protocol, env_id, env_kwargs, **kwargs)
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None

    def build_samples(self, episodes):
        mean = sum(ep.ret for ep in episodes) / len(episodes)
        baseline = mean if self.baseline is None else self.baseline
        self.baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * mean
        return [StepSample(s.prompt_ids, s.action_ids, s.logprobs, advantage=ep.ret - baseline)
                for ep in episodes for s in ep.steps]

    def loss(self, out, batch, mb):
        pg = mb.aggregate(-batch.advantages[:, None] * out.logprobs, batch.action_mask)
        return pg, {"train/pg_loss": pg.item()}

    def iteration_logs(self, episodes, samples):
        return {"train/baseline": self.baseline}


def test_a_new_algorithm_is_a_short_subclass_and_runs_through_prism_lit_fit(tmp_path, gw_policy_dir, monkeypatch):
    from prism_lit.cli import main

    assert len(inspect.getsource(MovingAverageReinforce).splitlines()) < 60
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 3, "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "limit_val_batches": 0, "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "logs"}}},
        "model": {"class_path": f"{__name__}.MovingAverageReinforce",
                  "init_args": {"policy": {"path": str(gw_policy_dir)}, "env_id": GUESS_WORD_ID,
                                "protocol": {"env": "guess_word", "reply_format": "bare",
                                             "system_prompt": "Guess the word .", "show_admissible": False},
                                "rollout": {"max_new_tokens": 3}, "group_size": 8,
                                "update": {"micro_batch_size": 64},
                                "export_dir": str(tmp_path / "export")}},
        "data": {"class_path": "prism_lit.rl.RLTaskDataModule",
                 "init_args": {"env_id": GUESS_WORD_ID, "tasks_per_batch": 8}},
    }
    path = tmp_path / "reinforce.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    # the algorithm's own argument and a shared group, both typed and settable on the command line
    main(["fit", "--config", str(path), "--model.init_args.baseline_decay", "0.5",
          "--model.init_args.optim.lr", "0.05"])
    (metrics,) = tmp_path.glob("logs/version_0/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/iteration")]
    assert [float(r["train/iteration"]) for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["train/baseline"] and r["train/pg_loss"] for r in rows)
    assert any(float(r["train/grad_norm"]) > 0 for r in rows)  # some episodes won: a learning signal
    hparams = yaml.safe_load((tmp_path / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["baseline_decay"] == 0.5 and hparams["optim"]["lr"] == 0.05
    start, _ = load_policy(PolicySpec(path=str(gw_policy_dir)))
    trained, _ = load_policy(PolicySpec(path=str(tmp_path / "export")))
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), trained.parameters()))



@pytest.mark.parametrize("algorithm", [f"{__name__}.MovingAverageReinforce", "prism_lit.rl.GRPOModule",
                                       "prism_lit.rl.PPOModule"])
def test_modules_plug_into_the_pipeline_factory(algorithm, gw_policy_dir, gw_protocol):
    """The pipeline reads ``rl.module`` as a factory (jsonargparse) and calls it with policy, protocol, env_id and
    env_kwargs positionally, plus export_dir and seed."""
    from jsonargparse import ArgumentParser

    from prism_lit.pipeline.config import RLModuleFactory

    parser = ArgumentParser()
    parser.add_argument("--module", type=RLModuleFactory)
    spec = {"class_path": algorithm, "init_args": {"optim": {"lr": 0.05}, "update": {"epochs": 2}}}
    args = parser.parse_args(["--module", yaml.safe_dump(spec), "--module.init_args.kl.coef", "0.1"])
    factory = parser.instantiate(args).module
    module = factory(PolicySpec(path=str(gw_policy_dir)), gw_protocol, GUESS_WORD_ID, {"max_attempts": 1},
                     export_dir="out", seed=3)
    assert type(module).__name__ == algorithm.rsplit(".", 1)[1]
    assert (module.optim.lr, module.update_config.epochs, module.kl.coef) == (0.05, 2, 0.1)
    assert (module.env_kwargs, module.export_dir, module.seed) == ({"max_attempts": 1}, "out", 3)

def _grads_of_one_minibatch(module, minibatch):
    module.model.zero_grad(set_to_none=True)
    module.manual_backward = lambda loss: loss.backward()  # outside a Trainer
    logs = module.minibatch_backward(minibatch)
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}, logs


def test_zero_advantage_steps_stay_in_the_token_mean_denominator(gw_policy_dir, gw_protocol):
    """As verl: a step whose advantage is 0 adds no gradient but counts in the minibatch's token count, so a batch
    where half the tokens carry no signal takes half the step. Skipping its forward (the default) changes nothing."""
    from prism_lit.rl import GRPOModule

    def module(skip):
        m = GRPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                       skip_zero_advantage=skip, update={"micro_batch_size": 1})
        m.configure_model()
        return m

    live = StepSample(prompt_ids=[5, 6, 7], action_ids=[8, 9], old_logprobs=[-2.0, -2.5], advantage=1.0)
    dead = [StepSample(prompt_ids=[5, 6], action_ids=[10, 11, 12], old_logprobs=[-2.0] * 3, advantage=0.0),
            StepSample(prompt_ids=[7], action_ids=[13], old_logprobs=[-1.0], advantage=0.0)]
    alone, _ = _grads_of_one_minibatch(module(False), [live])
    kept, _ = _grads_of_one_minibatch(module(False), [live, *dead])
    skipped, logs = _grads_of_one_minibatch(module(True), [live, *dead])
    assert alone.keys() == kept.keys() == skipped.keys()
    share = 2 / (2 + 3 + 1)  # the live step's reply tokens over all reply tokens of the minibatch
    for name in alone:
        assert torch.allclose(kept[name], share * alone[name], atol=1e-7), name
        assert torch.allclose(skipped[name], kept[name], atol=1e-7), name
    assert logs["train/clipfrac"] == 0.0 and logs["train/ratio_mean"] > 0  # logs: means over the steps run



@pytest.mark.parametrize("algorithm", ["GRPOModule", "PPOModule"])
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_accumulate_to_the_minibatch_gradient(gw_policy_dir, gw_protocol, algorithm, loss_agg):
    """Every term (policy, value, entropy, KL) is reduced with the minibatch's totals: one step at a time gives the
    gradient of the whole minibatch at once."""
    import prism_lit.rl as rl

    def grads(micro_batch_size):
        torch.manual_seed(0)
        module = getattr(rl, algorithm)(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol,
                                        env_id=GUESS_WORD_ID, entropy_coef=0.01, kl={"coef": 0.1},
                                        update={"micro_batch_size": micro_batch_size, "loss_agg": loss_agg})
        module.configure_model()
        if algorithm == "PPOModule":
            torch.nn.init.normal_(module.value_head.weight, std=0.1)
        with torch.no_grad():  # move away from the reference so the KL term has a gradient
            for p in module.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        samples = [StepSample(prompt_ids=[5, 6, 7][: 1 + i % 3], action_ids=[8 + i, 9, 10][: 1 + i % 3],
                              old_logprobs=[-2.0, -2.5, -1.5][: 1 + i % 3], advantage=0.5 - i % 2, ret=0.3 * i,
                              old_value=0.1) for i in range(5)]
        return _grads_of_one_minibatch(module, samples)

    (one_by_one, logs_one), (at_once, logs_all) = grads(1), grads(8)
    for name in at_once:
        scale = float(at_once[name].abs().max())  # fp32 sums in another order: error relative to the largest entry
        assert float((one_by_one[name] - at_once[name]).abs().max()) <= 1e-5 * scale + 1e-7, name
    assert logs_one.keys() == logs_all.keys() and {"train/kl", "train/entropy", "train/pg_loss"} <= logs_all.keys()
    for key in logs_all:
        assert logs_one[key] == pytest.approx(logs_all[key], rel=1e-4, abs=1e-6), key

def test_advantage_estimators_are_a_registry_users_extend(gw_policy_dir, gw_protocol):
    from prism_lit.rl import ADVANTAGE_ESTIMATORS, GRPOModule, compute_step_advantages, register_advantage

    @register_advantage("last_step_only")
    def last_step_only(inputs):
        return [[0.0] * (len(r) - 1) + [float(sum(r))] for r in inputs.step_rewards]

    try:
        assert compute_step_advantages("last_step_only", [[1.0, 2.0], [0.5]], [0, 0]) == [[0.0, 3.0], [0.5]]
        module = GRPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol,
                            env_id=GUESS_WORD_ID, advantage="last_step_only")
        assert module.advantage == "last_step_only"
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("grpo")(last_step_only)
    finally:
        ADVANTAGE_ESTIMATORS.pop("last_step_only")
    with pytest.raises(ValueError, match=r"'last_step_only' is unknown; choose one of \['gigpo', 'grpo'"):
        GRPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                   advantage="last_step_only")


def test_the_deprecated_reinforce_module_loads_old_flat_configs(tmp_path, gw_policy_dir):
    """A config written for ``prism_lit.rl.reinforce.ReinforceModule`` with flat arguments still loads (with a
    FutureWarning) and builds the GRPOModule the grouped arguments describe."""
    from prism_lit.cli import load_fit_config
    from prism_lit.rl import GRPOModule
    from prism_lit.rl.config import EvalConfig, KLConfig, OptimConfig, UpdateConfig

    config = {
        "trainer": {"accelerator": "cpu", "logger": False},
        "model": {"class_path": "prism_lit.rl.reinforce.ReinforceModule",
                  "init_args": {"policy": {"path": str(gw_policy_dir)}, "protocol": {"env": "guess_word"},
                                "env_id": GUESS_WORD_ID, "group_size": 4, "advantage": "rloo", "lr": 3e-3,
                                "weight_decay": 0.1, "max_grad_norm": 0.5, "update_epochs": 2, "minibatch_size": 8,
                                "micro_batch_size": 4, "loss_agg": "seq-mean-token-mean", "kl_coef": 0.01,
                                "kl_estimator": "k2", "eval_max_steps": 5, "sample_episodes": 2}},
        "data": {"class_path": "prism_lit.rl.RLTaskDataModule", "init_args": {"env_id": GUESS_WORD_ID}},
    }
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.warns(FutureWarning, match="ReinforceModule is deprecated"):
        module = load_fit_config(str(path)).model
    assert isinstance(module, GRPOModule) and module.advantage == "rloo" and module.group_size == 4
    assert module.optim == OptimConfig(lr=3e-3, weight_decay=0.1, max_grad_norm=0.5)
    assert module.update_config == UpdateConfig(epochs=2, minibatch_size=8, micro_batch_size=4,
                                                loss_agg="seq-mean-token-mean")
    assert module.kl == KLConfig(coef=0.01, estimator="k2")
    assert module.evaluation == EvalConfig(max_steps=5, sample_episodes=2)


@pytest.mark.parametrize(("section", "value", "message"), [
    ("update", {"epochs": 0}, "update.epochs must be >= 1"),
    ("update", {"micro_batch_size": 0}, "update.micro_batch_size must be >= 1"),
    ("update", {"loss_agg": "mean"}, "update.loss_agg 'mean' is unknown"),
    ("kl", {"estimator": "k4"}, "kl.estimator 'k4' is unknown"),
    ("optim", {"lr": 0.0}, "optim.lr must be > 0"),
])
def test_bad_settings_fail_naming_the_option(gw_policy_dir, gw_protocol, section, value, message):
    from prism_lit.rl import PPOModule

    with pytest.raises(ValueError, match=message):
        PPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                  **{section: value})


def test_a_partial_section_keeps_the_algorithm_defaults(gw_policy_dir, gw_protocol):
    """``update: {epochs: 2}`` for PPO keeps its 4 minibatches, from YAML (jsonargparse) as from a plain dict (the
    pipeline); ``minibatch_size`` wins over ``num_minibatches``."""
    from prism_lit.rl import PPOModule
    from prism_lit.rl.config import UpdateConfig

    ppo = PPOModule(policy=PolicySpec(path=str(gw_policy_dir)), protocol=gw_protocol, env_id=GUESS_WORD_ID,
                    update={"epochs": 2})
    assert ppo.update_config == UpdateConfig(epochs=2, num_minibatches=4) and ppo.group_size == 1
    assert UpdateConfig(num_minibatches=4).plan(10) == (3, 4)
    assert UpdateConfig(minibatch_size=4, num_minibatches=4).plan(10) == (4, 3)
    assert UpdateConfig().plan(10) == (10, 1)
