"""TurnSamples -> padded tensors, and micro-batches packed by a token budget.

Every forward over turn samples (old/ref log-probs, critic values, the policy and critic updates, SFT) walks its
samples with `iter_micro_batches`: pack by tokens -> this process's share (data parallelism) -> collate -> device.

Layout of one micro-batch (right padding; row b = prompt_b + response_b + pad):
    input_ids, attention_mask, response_mask : [B, T]
    per-token arrays (old log-probs, advantages, ...) are stored per sample as 1-D tensors of the response length
    and scattered to [B, T] at the response positions by `scatter_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from epo.rollout.types import TurnSample


@dataclass
class MicroBatch:
    index: list[int]  # positions of these samples in the step's sample list
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] float, 1 on response tokens
    turn_idx: torch.Tensor  # [B] long
    traj_id: torch.Tensor  # [B] long
    starts: list[int]  # response start column per row
    lengths: list[int]  # response length per row
    padding: bool = False  # another rank's batch, run only for FSDP2's collectives (distributed.my_share)

    def to(self, device: torch.device) -> MicroBatch:
        for name in ("input_ids", "attention_mask", "response_mask", "turn_idx", "traj_id"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def scatter_tokens(self, per_sample: list[torch.Tensor]) -> torch.Tensor:
        """[len_b] tensors, one per row of this batch -> [B, T] at the response positions (0 elsewhere)."""
        out = torch.zeros(self.response_mask.shape, dtype=torch.float32, device=self.response_mask.device)
        for row, i in enumerate(self.index):
            s, n = self.starts[row], self.lengths[row]
            out[row, s : s + n] = per_sample[i].to(out.device, torch.float32)
        return out

    def gather_tokens(self, tensor_bt: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of scatter_tokens: [B, T] -> one [len_b] tensor per row (detached, on CPU)."""
        t = tensor_bt.detach().float().cpu()
        return [t[row, s : s + n].clone() for row, (s, n) in enumerate(zip(self.starts, self.lengths))]


def collate(samples: list[TurnSample], index: list[int], pad_id: int) -> MicroBatch:
    rows = [samples[i] for i in index]
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    starts, lengths = [], []
    for r, s in enumerate(rows):
        p, n = len(s.prompt_ids), len(s.response_ids)
        input_ids[r, : p + n] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attention_mask[r, : p + n] = 1
        response_mask[r, p : p + n] = 1.0
        starts.append(p)
        lengths.append(n)
    return MicroBatch(
        index=list(index),
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        turn_idx=torch.tensor([s.turn_idx for s in rows], dtype=torch.long),
        traj_id=torch.tensor([s.traj_id for s in rows], dtype=torch.long),
        starts=starts,
        lengths=lengths,
    )


def pack_by_tokens(index: list[int], samples: list[TurnSample], token_budget: int) -> list[list[int]]:
    """Split `index` into micro-batches whose padded size (rows x longest row) stays within the budget.

    Sorting by length first keeps padding small; a single sample longer than the budget gets a batch of its own.
    """

    def length(i: int) -> int:
        return len(samples[i].prompt_ids) + len(samples[i].response_ids)

    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(index, key=length):
        grown = max(longest, length(i))
        if current and grown * (len(current) + 1) > token_budget:
            batches.append(current)
            current, grown = [], length(i)
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def iter_micro_batches(
    samples: list[TurnSample],
    index: list[int],
    pad_id: int,
    token_budget: int,
    device: torch.device,
    share: Callable[[list[list[int]]], list[list[int]]] | None = None,
) -> Iterator[MicroBatch]:
    """The micro-batches of samples[index], packed by `pack_by_tokens`, collated and moved to `device`, in order.

    share picks this process's micro-batches from the packed list, e.g. `distributed.my_share` (rank r takes
    r, r+W, ...): every rank packs the same list, so the union over ranks is the single-process iteration.
    Each batch is collated only when it is reached (mb.index = its positions in `samples`)."""
    micro_batches = pack_by_tokens(index, samples, token_budget)
    if share is not None:
        micro_batches = share(micro_batches)
    for micro in micro_batches:
        mb = collate(samples, micro, pad_id).to(device)
        mb.padding = bool(getattr(micro, "padding", False))
        yield mb
