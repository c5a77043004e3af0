"""The Llama-style decoder step that scripts/bench-reference times: RMSNorm,
multi-head attention without rotary embedding, a SwiGLU MLP, residual adds;
one token in, no KV cache (the token attends to itself only, yet every
weight is read once per token, as in a real decoder step).

A module of its own, imported by the benchmark's children, so that
torch.save can pickle the model and torch.load find its classes."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width).uniform_(0.5, 1.5))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    def __init__(self, width, mlp, heads):
        super().__init__()
        self.width, self.heads = width, heads
        self.attention_norm = RMSNorm(width)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.mlp_norm = RMSNorm(width)
        self.gate = nn.Linear(width, mlp, bias=False)
        self.up = nn.Linear(width, mlp, bias=False)
        self.down = nn.Linear(mlp, width, bias=False)

    def split(self, t):
        """[1, 1, width] as [1, heads, 1, head_dim]."""
        return t.view(1, 1, self.heads, self.width // self.heads).transpose(1, 2)

    def forward(self, x):
        h = self.attention_norm(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        scores = torch.softmax(q @ k.transpose(-1, -2) / (self.width // self.heads) ** 0.5, dim=-1)
        x = x + self.o((scores @ v).transpose(1, 2).reshape(1, 1, self.width))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    """`layers` blocks and a final RMSNorm over a [1, 1, width] hidden state
    (the embedded token); random weights (the caller seeds)."""

    def __init__(self, layers=8, width=1024, mlp=2816, heads=16):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, mlp, heads) for _ in range(layers))
        self.norm = RMSNorm(width)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
