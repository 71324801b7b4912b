"""PPO math against naive references and hand-computed values (rlhf/engine/rl_ops.py)."""

import math

import pytest
import torch

from rlhf.engine import rl_ops


def _mask(lengths, L):
    return (torch.arange(L).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def naive_gae(rewards, values, length, gamma, lam):
    """GAE of one episode from the definition A_t = Σ_k (γλ)^k δ_{t+k}, in plain Python."""
    r, v = rewards[:length], [*values[:length], 0.0]
    deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(length)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t)) for t in range(length)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_loop_and_vectorised_gae_agree_with_the_definition(gamma, lam):
    torch.manual_seed(0)
    B, L = 5, 9
    lengths = [9, 1, 4, 7, 3]
    mask = _mask(lengths, L)
    rewards, values = torch.randn(B, L, dtype=torch.float64), torch.randn(B, L, dtype=torch.float64)
    adv_loop, ret_loop = rl_ops.gae_loop(rewards, values, mask, gamma, lam)
    adv_vec, ret_vec = rl_ops.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv_vec, adv_loop)
    torch.testing.assert_close(ret_vec, ret_loop)
    for b, n in enumerate(lengths):
        expected = naive_gae(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        torch.testing.assert_close(adv_loop[b, :n], torch.tensor(expected, dtype=torch.float64))
        assert adv_loop[b, n:].abs().sum() == 0 and ret_loop[b, n:].abs().sum() == 0
    torch.testing.assert_close(ret_loop, (adv_loop + values) * mask)


def test_gae_of_a_hand_computed_two_step_episode():
    # r = [0, 1], V = [0.5, 0.2], γ = 1, λ = 0.5: δ1 = 1 − 0.2 = 0.8, δ0 = 0 + 0.2 − 0.5 = −0.3,
    # A1 = 0.8, A0 = −0.3 + 0.5·0.8 = 0.1
    adv, ret = rl_ops.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.1, 0.8]]))
    torch.testing.assert_close(ret, torch.tensor([[0.6, 1.0]]))


def test_masked_mean_and_whiten_ignore_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    kept = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rl_ops.masked_mean(values, mask).item() == pytest.approx(sum(kept) / 5)
    mean = sum(kept) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in kept) / 5)
    white = rl_ops.masked_whiten(values, mask)
    expected = [(x - mean) / std for x in kept]
    assert white[mask.bool()].tolist() == pytest.approx(expected, abs=1e-5)
    kept_mean_white = rl_ops.masked_whiten(values, mask, shift_mean=False)
    assert kept_mean_white[mask.bool()].tolist() == pytest.approx([e + mean for e in expected], abs=1e-5)


def test_kl_estimators_match_their_formulas_and_k3_is_never_negative():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.9]]))
    r = torch.exp(ref - logp)  # π_ref / π
    torch.testing.assert_close(rl_ops.kl_penalty(logp, ref, "k1"), -torch.log(r))
    torch.testing.assert_close(rl_ops.kl_penalty(logp, ref, "k2"), 0.5 * torch.log(r) ** 2)
    torch.testing.assert_close(rl_ops.kl_penalty(logp, ref, "k3"), (r - 1) - torch.log(r))
    assert (rl_ops.kl_penalty(logp, ref, "k3") >= 0).all()
    assert rl_ops.kl_penalty(logp, ref, "k1")[0, 2].item() == 0.0
    with pytest.raises(ValueError, match="k1"):
        rl_ops.kl_penalty(logp, ref, "k4")


def test_kl_estimators_are_unbiased_on_samples_of_a_categorical():
    torch.manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum()
    a = torch.multinomial(p, 200_000, replacement=True)
    for est in ("k1", "k3"):
        assert rl_ops.kl_penalty(p.log()[a], q.log()[a], est).mean().item() == pytest.approx(exact.item(), abs=0.01)


def test_kl_shaped_rewards_put_the_score_on_the_last_answer_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = rl_ops.kl_shaped_rewards(torch.tensor([1.0, -2.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 0.85], [-2.25, 0.0, 0.0]]))


def test_clipped_policy_loss_on_hand_computed_values():
    # ratios 1.5 (A=+1: clipped to 1.2), 0.5 (A=+1: unclipped 0.5 is the min), 1.5 (A=−1: unclipped 1.5)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = rl_ops.clipped_policy_loss(new, old, adv, torch.ones(1, 3), cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (3 * math.log(1.5) ** 2 + 0) / 3 + 0.5 * (
        math.log(0.5) ** 2 - math.log(1.5) ** 2) / 3)


def test_clipped_policy_loss_gradient_vanishes_where_clipped():
    new = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = rl_ops.clipped_policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 1].item() == pytest.approx(-0.5)


def test_clipped_value_loss_on_hand_computed_values():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[1.0, 1.0]])
    # pos 0: unclipped (1−1)² = 0, clipped (0.2−1)² = 0.64 → 0.64; pos 1: (0.1−1)² = 0.81, clip same → 0.81
    loss, clipfrac = rl_ops.clipped_value_loss(new, old, ret, torch.ones(1, 2), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_entropy_from_logits_matches_the_definition():
    logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]]])
    ent = rl_ops.entropy_from_logits(logits)
    assert ent[0, 0].item() == pytest.approx(math.log(2))
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_moves_beta_towards_the_target_and_fixed_stays():
    ctl = rl_ops.AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(current_kl=10.0, n_steps=10)  # error clipped to +0.2 → β·(1 + 0.02)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=0.0, n_steps=10)
    assert ctl.value == pytest.approx(0.102 * 0.98)
    fixed = rl_ops.AdaptiveKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1


def test_running_moments_equal_the_moments_of_all_batches_so_far():
    torch.manual_seed(0)
    batches = [torch.rand(16), torch.rand(5) * 3, torch.randn(32) + 1]
    moments = rl_ops.RunningMoments()
    for i, b in enumerate(batches):
        moments.update(b)
        seen = torch.cat(batches[: i + 1]).double()
        assert moments.mean == pytest.approx(seen.mean().item(), abs=1e-9)
        assert moments.std == pytest.approx(seen.std(unbiased=False).item(), abs=1e-9)
    normed = moments.normalise(torch.cat(batches).double())
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-9) and normed.std(unbiased=False).item() == pytest.approx(1.0)
    again = rl_ops.RunningMoments(**moments.state_dict())  # what a resumed run restores
    assert again.state_dict() == moments.state_dict()
    constant = rl_ops.RunningMoments()
    constant.update(torch.full((8,), 0.5))
    assert constant.normalise(torch.full((8,), 0.5)).abs().max().item() == 0.0  # no division by zero
