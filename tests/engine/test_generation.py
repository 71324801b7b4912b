"""Generation: K distinct candidates per prompt with log-probabilities; the Samples JSONL."""

import json
import random

import torch

from rlhf.engine.data import encode_completions
from rlhf.engine.demo import world
from rlhf.engine.generation import generate_candidates, greedy_answers, sample, write_samples


def _records(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        image, gt = world.make_scene(rng)
        out.append({"prompt_id": f"p{i}", "images": [image], "prompt": world.CAPTION_PROMPT, "ground_truth": gt})
    return out


def test_generate_returns_k_distinct_candidates_with_logprobs(tiny_model):
    model, processor = tiny_model
    records = _records(5)
    cands = generate_candidates(model, processor, records, k=4, temperature=0.7, batch_size=3, seed=1)
    assert [len(c) for c in cands] == [4] * 5
    for c in cands:
        texts = [x["text"] for x in c]
        assert len({" ".join(t.lower().split()) for t in texts}) == 4 and all(texts)
        assert all(x["logprob"] < 0 and x["num_tokens"] >= 1 for x in c)


def test_duplicates_are_replaced_even_when_the_model_is_nearly_greedy(tiny_model):
    model, processor = tiny_model
    cands = generate_candidates(model, processor, _records(2), k=3, temperature=0.05, seed=0,
                                max_resample_rounds=12, resample_temperature_step=0.5)
    assert all(len({x["text"] for x in c}) == 3 for c in cands)


def test_sample_logprobs_equal_a_fresh_forward_pass(tiny_model):
    """The logged log π(answer) matches teacher-forced scoring of the same answer."""
    model, processor = tiny_model
    records = _records(2, seed=3)
    torch.manual_seed(0)
    ro = sample(model, processor, [r["images"] for r in records], [r["prompt"] for r in records], max_new_tokens=40)
    batch = encode_completions(processor, [r["images"] for r in records], [r["prompt"] for r in records], ro.texts)
    with torch.no_grad():
        logits = model(**batch.inputs).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.inputs["input_ids"][:, 1:, None]).squeeze(-1)
    teacher = (lp * batch.completion_mask[:, 1:]).sum(-1)
    ended = (ro.completion_ids == processor.tokenizer.eos_token_id).any(-1)  # else no EOS to score
    assert ended.any()
    assert torch.allclose(ro.logprobs[ended], teacher[ended], atol=1e-3)


def test_greedy_answers_are_deterministic(tiny_model):
    model, processor = tiny_model
    records = _records(3, seed=9)
    assert greedy_answers(model, processor, records) == greedy_answers(model, processor, records)


def test_write_samples_follows_the_samples_format(tmp_path):
    records = [{"prompt_id": "a"}, {"prompt_id": "b"}]
    cands = [[{"text": "x", "logprob": -1.0}, {"text": "y", "logprob": -2.0}], [{"text": "z", "logprob": -0.5}]]
    assert write_samples(tmp_path / "s.jsonl", records, cands, "v1") == 3
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt_id": "a", "text": "x", "model_version": "v1", "logprob": -1.0}
