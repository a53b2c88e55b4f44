"""Padding layout and token-budget packing."""

from __future__ import annotations

import torch

from epo.rollout.types import TurnSample
from epo.trainer.batching import collate, iter_micro_batches, pack_by_tokens


def _sample(p: int, r: int, turn: int = 0) -> TurnSample:
    return TurnSample(list(range(1, p + 1)), list(range(100, 100 + r)), turn, traj_id=turn, group_id=0)


def test_collate_right_pads_and_marks_response_tokens():
    samples = [_sample(3, 2), _sample(1, 4, turn=1)]
    mb = collate(samples, [0, 1], pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 100, 101], [1, 100, 101, 102, 103]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert mb.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    assert mb.turn_idx.tolist() == [0, 1]
    per_sample = [torch.tensor([0.25, 0.75]), torch.tensor([1.0, 2.0, 3.0, 4.0])]
    scattered = mb.scatter_tokens(per_sample)
    assert scattered.tolist() == [[0, 0, 0, 0.25, 0.75], [0, 1, 2, 3, 4]]
    back = mb.gather_tokens(scattered)
    assert [b.tolist() for b in back] == [[0.25, 0.75], [1, 2, 3, 4]]


def test_pack_by_tokens_respects_budget_and_keeps_every_sample():
    lengths = [(10, 5), (3, 2), (40, 10), (7, 1), (20, 20), (5, 5)]
    samples = [_sample(p, r) for p, r in lengths]
    batches = pack_by_tokens(list(range(len(samples))), samples, token_budget=60)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for b in batches:
        longest = max(len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in b)
        assert longest * len(b) <= 60 or len(b) == 1


def test_oversized_sample_gets_its_own_batch():
    samples = [_sample(100, 10), _sample(2, 2)]
    batches = pack_by_tokens([0, 1], samples, token_budget=20)
    assert [0] in batches and [1] in batches


def test_iter_micro_batches_is_pack_then_collate_and_rank_shares_partition_it():
    lengths = [(10, 5), (3, 2), (40, 10), (7, 1), (20, 20), (5, 5), (12, 3)]
    samples = [_sample(p, r, turn=t) for t, (p, r) in enumerate(lengths)]
    index = [6, 0, 2, 3, 5]  # a mini-batch: a subset, in shuffled order
    packed = pack_by_tokens(index, samples, token_budget=40)
    assert len(packed) >= 3  # enough micro-batches for two ranks to differ
    got = list(iter_micro_batches(samples, index, pad_id=0, token_budget=40, device=torch.device("cpu")))
    assert [mb.index for mb in got] == packed
    for mb, micro in zip(got, packed):
        ref = collate(samples, micro, pad_id=0)
        assert torch.equal(mb.input_ids, ref.input_ids) and torch.equal(mb.response_mask, ref.response_mask)
    # rank r of W takes micro-batches r, r+W, ...: the ranks' shares partition the single-process list
    world = 2
    shares = [
        [mb.index for mb in iter_micro_batches(samples, index, 0, 40, torch.device("cpu"), lambda m, r=r: m[r::world])]
        for r in range(world)
    ]
    assert shares[0] == packed[0::2] and shares[1] == packed[1::2]
    assert sorted(i for share in shares for micro in share for i in micro) == sorted(index)
