"""Multi-head self-attention with interchangeable backends: exact (SDPA), Nystrom, and auto.

All three share one set of weights (`to_qkv`, `res_conv`, `to_out`), so a model trained with one backend runs with
another, and `auto` can switch per call on the token count. Nystrom attention (Xiong et al. 2021,
"Nystromformer") comes from the `nystrom-attention` package; it pads the sequence to a multiple of the landmark
count, so it is always called with a keep-mask, otherwise its zero pads would take attention weight.

Measured on 2 CPU cores (DESIGN.md, `bench/attention.py`): Nystrom-256 costs ~120-150 ms per layer whatever the
length (its pseudo-inverse is 24 m^3 per head) and only beats exact attention past a few thousand tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from nystrom_attention import NystromAttention
from torch import nn

from encoder.config import AttentionConfig


class Attention(nn.Module):
    """Self-attention over (B, N, D) tokens; `heads x dim_head` need not equal D.

    Args:
        dim: token width D.
        heads: number of heads H.
        dim_head: width of one head.
        qkv_bias: bias on the joint q, k, v projection.
        cfg: backend and Nystrom settings.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, qkv_bias: bool, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = heads
        self.scale = dim_head**-0.5
        # The package module owns the weights; the exact path reuses them, so both backends are one function family.
        self.nystrom = NystromAttention(
            dim=dim,
            dim_head=dim_head,
            heads=heads,
            num_landmarks=cfg.num_landmarks,
            pinv_iterations=cfg.pinv_iterations,
            residual=cfg.value_residual,
            residual_conv_kernel=cfg.residual_kernel,
        )
        if qkv_bias:
            self.nystrom.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=True)

    def backend_for(self, n: int) -> str:
        """The backend used for a sequence of `n` tokens."""
        if self.cfg.backend == "auto":
            return "exact" if n < self.cfg.crossover else "nystrom"
        return self.cfg.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        if self.backend_for(x.shape[1]) == "exact":
            return self.forward_exact(x)
        return self.forward_nystrom(x)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        m = self.nystrom
        qkv = rearrange(m.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k, v = qkv.unbind(0)  # each (B, H, N, dh)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, N, dh)
        if m.residual:
            out = out + m.res_conv(v)  # depthwise conv along N, heads as channels
        return m.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward_nystrom(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, N): pads added inside get False
        return self.nystrom(x, mask=keep)
