"""The course's model in PyTorch, as the baseline seqgen_jax is measured against.

Embedding -> nn.LSTM (cuDNN on GPU, oneDNN on CPU) -> Linear, Adam with clip_grad_norm_(5), in these
variants:
* `course` pads each batch on the host every step, calls `.item()` every step and samples by
  re-running the whole prefix;
* `careful` is what a careful PyTorch user writes: pre-padded batches on the device, time-major input
  (nn.LSTM's native layout), fused Adam, `cudnn.benchmark` on GPU, optional bf16 autocast, syncs only
  when asked, and samples with a carried state;
* `folded` (careful + seqgen_jax's embedding fold): the embedding folded into the LSTM's input
  weights, as a one-hot input of width V into nn.LSTM (W_ih (4H, V) is the table E·W_ih + b), so the
  (T·B, E) x (E, 4H) projection and its gradients become V-wide: the same algebra seqgen_jax uses;
* `compiled` (folded + `torch.compile`; on a GPU mode="reduce-overhead", i.e. CUDA graphs), its
  compilation done in the first (warm-up) call and reported apart by the callers.
Needs the optional extra: `pip install -e '.[torch]'`."""
from __future__ import annotations

import torch
from torch import nn


class CourseLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int = 1, batch_first: bool = True,
                 folded: bool = False):
        super().__init__()
        self.vocab, self.folded = vocab, folded
        # Folded: no embedding table; nn.LSTM reads one-hot tokens, its W_ih being the folded table.
        self.embed = None if folded else nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(vocab if folded else embed, hidden, num_layers=layers, batch_first=batch_first)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        inp = nn.functional.one_hot(x, self.vocab).float() if self.folded else self.embed(x)
        y, state = self.lstm(inp, state)
        return self.out(y), state


def set_precision(mode: str) -> None:
    """tf32: PyTorch's cuDNN default for RNNs (also used under bf16 autocast for what stays fp32);
    fp32: strict IEEE float32 everywhere."""
    tf32 = mode in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True  # a careful user's setting: cuDNN picks its fastest algorithm


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fused_adam(params, lr):
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a build without the fused kernel for this device
        return torch.optim.Adam(params, lr=lr)


class Trainer:
    """`careful=True`: time-major model, fused Adam, `bf16` autocast if asked; `careful=False`: the
    course's batch-first model and plain Adam (`step_course`)."""

    def __init__(self, vocab, embed, hidden, device, lr=1e-3, clip=5.0, seed=0, careful=True, bf16=False,
                 folded=False, compiled=False):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.careful = careful
        self.model = CourseLSTM(vocab, embed, hidden, batch_first=not careful, folded=folded).to(self.device)
        self.opt = _fused_adam(self.model.parameters(), lr) if careful else torch.optim.Adam(self.model.parameters(), lr=lr)
        self.clip = clip
        self.bf16 = bf16
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=0)
        self.forward = self.model
        if compiled:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            # dynamic: one compilation serves every bucket shape of an epoch (dynamic=False recompiled per
            # shape, ~20 s each on 2 CPU cores)
            self.forward = torch.compile(self.model, mode=mode, dynamic=True)

    def _step(self, rows: torch.Tensor):
        """rows (B, T+1), batch-major as stored; the careful model reads them time-major."""
        if self.careful:
            tm = rows.t()
            inp, tgt = tm[:-1], tm[1:]
        else:
            inp, tgt = rows[:, :-1], rows[:, 1:]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits, _ = self.forward(inp)
            loss = self.loss_fn(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))
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
        if self.careful:  # time-major: one step is (1, n)
            x = torch.full((1, n), 1, dtype=torch.long, device=self.device)
            state, out = None, []
            for _ in range(length):
                logits, state = self.forward(x, state)
                p = torch.softmax(logits[-1] / temperature, dim=-1)
                x = torch.multinomial(p, 1).t()
                out.append(x)
            return torch.cat(out, 0).t()
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
        assert not self.careful, "the course's re-run sampler uses the course's batch-first model"
        seq = torch.full((n, 1), 1, dtype=torch.long, device=self.device)
        for _ in range(length):
            logits, _ = self.model(seq)  # the whole prefix again, as the course's sampler
            p = torch.softmax(logits[:, -1] / temperature, dim=-1)
            seq = torch.cat([seq, torch.multinomial(p, 1)], 1)
        return seq[:, 1:]
