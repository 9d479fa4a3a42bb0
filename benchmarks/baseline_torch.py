"""The course's model in PyTorch, as the baseline seqgen_jax is measured against.

Embedding -> nn.LSTM (cuDNN on GPU, oneDNN on CPU) -> Linear, Adam with clip_grad_norm_(5), in two
variants: `course` pads each batch on the host every step, calls `.item()` every step and samples by
re-running the whole prefix; `careful` keeps pre-padded batches on the device, syncs only when asked
and samples with a carried state. Needs the optional extra: `pip install -e '.[torch]'`."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class CourseLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        y, state = self.lstm(self.embed(x), state)
        return self.out(y), state


def set_precision(mode: str) -> None:
    """tf32: PyTorch's cuDNN default for RNNs; fp32: strict IEEE float32 everywhere."""
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    def __init__(self, vocab, embed, hidden, device, lr=1e-3, clip=5.0, seed=0):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = CourseLSTM(vocab, embed, hidden).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.clip = clip
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=0)

    def _step(self, rows: torch.Tensor):
        inp, tgt = rows[:, :-1], rows[:, 1:]
        logits, _ = self.model(inp)
        loss = self.loss_fn(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss, gn

    def step_course(self, seqs: list[list[int]]):
        """Pad on the host (a Python loop, as the course code does) and read the loss every step."""
        width = max(len(s) for s in seqs)
        padded = [s + [0] * (width - len(s)) for s in seqs]
        rows = torch.tensor(padded, dtype=torch.long, device=self.device)
        loss, gn = self._step(rows)
        return loss.item(), gn.item()

    def step_careful(self, rows: torch.Tensor):
        return self._step(rows)

    @torch.no_grad()
    def sample_carried(self, n: int, length: int, temperature: float = 1.0):
        x = torch.full((n, 1), 1, dtype=torch.long, device=self.device)
        state, out = None, []
        for _ in range(length):
            logits, state = self.model(x, state)
            p = torch.softmax(logits[:, -1] / temperature, dim=-1)
            x = torch.multinomial(p, 1)
            out.append(x)
        return torch.cat(out, 1)

    @torch.no_grad()
    def sample_prefix_rerun(self, n: int, length: int, temperature: float = 1.0):
        seq = torch.full((n, 1), 1, dtype=torch.long, device=self.device)
        for _ in range(length):
            logits, _ = self.model(seq)  # the whole prefix again, as the course's sampler
            p = torch.softmax(logits[:, -1] / temperature, dim=-1)
            seq = torch.cat([seq, torch.multinomial(p, 1)], 1)
        return seq[:, 1:]


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` after warm-up, synchronised with the device."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
