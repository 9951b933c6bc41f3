"""PPO/GRPO loss terms against values worked out by hand, and exact gradient accumulation."""

import math

import pytest
import torch

from prism_lit.rl.losses import aggregate, clipped_policy_loss, clipped_value_loss, gae, kl_penalty

LOGP = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
OLD = torch.tensor([[-1.2, -1.9], [-0.5, 0.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
# per token: clipped at 1.2 -> -1.2; ratio exp(-0.1) inside the range -> -exp(-0.1); ratio 1 with A=-2 -> 2
T00, T01, T10 = -1.2, -math.exp(-0.1), 2.0


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (T00 + T01 + T10) / 3),
        ("seq-mean-token-sum", ((T00 + T01) + T10) / 2),
        ("seq-mean-token-mean", ((T00 + T01) / 2 + T10) / 2),
        ("seq-mean-token-sum-norm", ((T00 + T01) / 4 + T10 / 4) / 2),
    ],
)
def test_clipped_policy_loss_matches_hand_computation(mode, expected):
    loss, stats = clipped_policy_loss(LOGP, OLD, ADV, MASK, clip_low=0.2, mode=mode, norm_length=4)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(stats["clipfrac"]) == pytest.approx(1 / 3)


def test_asymmetric_clip_uses_clip_high_for_positive_advantages():
    loss, _ = clipped_policy_loss(torch.tensor([[0.0]]), torch.tensor([[-1.0]]), torch.tensor([1.0]),
                                  torch.ones(1, 1), clip_low=0.2, clip_high=0.28)
    assert float(loss) == pytest.approx(-1.28)


def test_ratio_one_gives_minus_mean_advantage_and_zero_kl():
    loss, stats = clipped_policy_loss(LOGP, LOGP.clone(), ADV, MASK)
    assert float(loss) == pytest.approx(-(1 + 1 - 2) / 3)
    assert float(stats["approx_kl"]) == 0.0 and float(stats["ratio_mean"]) == 1.0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_micro_batch_contributions_sum_to_the_minibatch_loss_and_gradient(mode):
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    old = torch.randn(5, 3)
    adv = torch.randn(5)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    whole, _ = clipped_policy_loss(logits, old, adv, mask, mode=mode)
    (g_whole,) = torch.autograd.grad(whole, logits)
    totals = {"num_tokens": float(mask.sum()), "num_seqs": 5}
    parts = [clipped_policy_loss(logits[s], old[s], adv[s], mask[s], mode=mode, **totals)[0]
             for s in (slice(0, 2), slice(2, 5))]
    (g_parts,) = torch.autograd.grad(sum(parts), logits)
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), abs=1e-6)
    assert torch.allclose(g_parts, g_whole, atol=1e-6)


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert float(kl_penalty(lp, ref, "k1")) == pytest.approx(0.5)
    assert float(kl_penalty(lp, ref, "k2")) == pytest.approx(0.125)
    assert float(kl_penalty(lp, ref, "k3")) == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    assert float(kl_penalty(lp, lp, "k3")) == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(lp, ref, "k4")


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOGP, MASK, "mean")


def test_clipped_value_loss():
    v, old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    assert clipped_value_loss(v, old, ret, 0.2).tolist() == pytest.approx([0.5 * 1.3**2, 0.5 * 0.3**2])
    assert clipped_value_loss(v, old, ret, None).tolist() == pytest.approx([0.5, 0.0])


def test_gae_matches_hand_computation():
    adv, ret = gae(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.6, 0.7]), torch.tensor([0.0, 0.0, 1.0]),
                   0.0, gamma=0.9, lam=0.8)
    a2 = 1 - 0.7
    a1 = (0.9 * 0.7 - 0.6) + 0.72 * a2
    a0 = (0.9 * 0.6 - 0.5) + 0.72 * a1
    assert adv.tolist() == pytest.approx([a0, a1, a2])
    assert ret.tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_bootstraps_a_cut_trajectory_and_stops_at_done():
    adv, _ = gae(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), 2.0, 1.0, 1.0)
    assert adv.tolist() == pytest.approx([1.0, 2.0])  # step 0 ended its episode: no value flows back into it
