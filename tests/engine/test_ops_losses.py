"""Pure math of `ops` and `losses` against naive references."""

import math

import torch

from rlhf.engine.losses import bradley_terry_loss, reward_centering_loss, sft_loss
from rlhf.engine.ops import (
    completion_mask_after_eos,
    first_true_indices,
    gather_token_logprobs,
    last_non_pad_index,
    masked_mean,
    masked_whiten,
)


def test_bradley_terry_loss_matches_the_naive_formula():
    """-mean log σ(r_c - r_r - m), written out element by element."""
    torch.manual_seed(0)
    rc, rr, m = torch.randn(7), torch.randn(7), torch.rand(7)
    naive = sum(-math.log(1 / (1 + math.exp(-(a - b - c)))) for a, b, c in zip(rc.tolist(), rr.tolist(),
                                                                            m.tolist(), strict=True)) / 7
    assert math.isclose(bradley_terry_loss(rc, rr, m).item(), naive, rel_tol=1e-5)
    naive0 = sum(math.log1p(math.exp(-(a - b))) for a, b in zip(rc.tolist(), rr.tolist(), strict=True)) / 7
    assert math.isclose(bradley_terry_loss(rc, rr).item(), naive0, rel_tol=1e-5)


def test_bradley_terry_loss_is_log2_at_equal_rewards_and_falls_with_the_gap():
    r = torch.zeros(3)
    assert math.isclose(bradley_terry_loss(r, r).item(), math.log(2), rel_tol=1e-6)
    assert bradley_terry_loss(r + 2, r).item() < bradley_terry_loss(r + 1, r).item()


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    rc, rr = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    assert (rc.grad < 0).all() and (rr.grad > 0).all()


def test_centering_loss_is_zero_for_opposite_rewards():
    assert reward_centering_loss(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])).item() == 0.0


def test_last_non_pad_index_under_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    naive = [max(i for i, v in enumerate(row) if v) for row in right.tolist()]
    assert last_non_pad_index(right).tolist() == naive == [2, 4, 0]
    assert last_non_pad_index(left).tolist() == [4, 4, 4]


def test_masked_mean_and_whiten_ignore_masked_positions():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, m).item() == 2.5
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 3.5]
    w = masked_whiten(x, m)
    assert abs(masked_mean(w, m).item()) < 1e-6
    assert abs(masked_mean(w**2, m).item() - 1) < 1e-4


def test_first_true_indices_returns_length_when_absent():
    b = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    assert first_true_indices(b).tolist() == [1, 3, 0]


def test_completion_mask_keeps_tokens_up_to_and_including_eos():
    tokens = torch.tensor([[5, 6, 2, 0], [5, 5, 5, 5]])
    assert completion_mask_after_eos(tokens, 2).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_gather_token_logprobs_matches_log_softmax_lookup():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    lp = gather_token_logprobs(logits, tokens)
    naive = [[torch.log_softmax(logits[b, t], -1)[tokens[b, t]].item() for t in range(3)] for b in range(2)]
    assert torch.allclose(lp, torch.tensor(naive), atol=1e-6)


def test_sft_loss_ignores_prompt_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6)
    labels = torch.tensor([[-100, -100, 3, 1]])
    naive = -(torch.log_softmax(logits[0, 1], -1)[3] + torch.log_softmax(logits[0, 2], -1)[1]) / 2
    assert torch.isclose(sft_loss(logits, labels), naive)
