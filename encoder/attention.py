"""Multi-head self-attention with interchangeable backends: exact (SDPA), Nystrom, and auto.

All three share one set of weights (`to_qkv`, `res_conv`, `to_out`, owned by a `nystrom_attention.NystromAttention`
module), so a model trained with one backend runs with another, and `auto` switches per call on the token count.

Nystrom attention is Xiong et al. 2021, "Nystromformer", as implemented by the `nystrom-attention` package: the
sequence is padded in front to a multiple of m landmarks, landmarks are masked segment means, and the pseudo-inverse
of the m x m landmark kernel is Newton-Schulz iterated. The package's forward is re-stated here (`forward_nystrom`,
tested equal to it for a single sample) with two fixes:
- its pseudo-inverse starts from A^T / (max col-sum x max row-sum) taken over the whole *batch*, so one image's
  output depended on the other images in its batch (measured: 0.3% relative change at 920 tokens). Here the maxima
  are per sample (over heads, as the package does for one sample), so an embedding never depends on its batch.
- its identity matrix is float32, so a bfloat16 model failed; here the pseudo-inverse always runs in float32.
The keep-mask is always applied, so the zero pads take no attention weight (without it they do: measured 16%
relative change at 73 tokens with 256 landmarks).

`auto`'s crossover is per device: `cfg.crossover` when set (> 0), else the entry for the device's name in
`crossovers.json` beside this file (`cpu` for any CPU; GPU entries are written by `bench/gpu.py --save-crossover`),
else the CPU entry with a warning. A module resolves it once, on its first forward or by `bind_crossover`, and keeps
it, so a run never switches backend mid-way (its numbers stay reproducible).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from nystrom_attention import NystromAttention
from torch import nn

from encoder.config import AttentionConfig

log = logging.getLogger(__name__)
CROSSOVERS = Path(__file__).with_name("crossovers.json")


def device_name(device: torch.device) -> str:
    """`cpu` for any CPU, else the CUDA device's name (the key of `crossovers.json`)."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def crossover_for(cfg: AttentionConfig, device: torch.device) -> int:
    """The token count (cls included) where `auto` switches from exact to Nystrom on `device`."""
    if cfg.crossover > 0:
        return cfg.crossover
    table = json.loads(CROSSOVERS.read_text())
    name = device_name(device)
    if name not in table:
        log.warning(
            "no measured attention crossover for %s in %s: using the CPU value %d (run bench/gpu.py --save-crossover)",
            name, CROSSOVERS, table["cpu"]["crossover"],
        )  # fmt: skip
        name = "cpu"
    return int(table[name]["crossover"])


def bind_crossover(model: nn.Module, device: torch.device) -> None:
    """Resolve every `Attention`'s crossover for `device` now (before `torch.compile`, which should not trace the
    table look-up)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.crossover = crossover_for(module.cfg, device)


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """a: (B, H, m, m) -> its Moore-Penrose pseudo-inverse by `iters` Newton-Schulz steps (Razavi et al. 2014).

    Computed in float32 whatever the input dtype. The start z0 = a^T / (||a||_1 ||a||_inf) takes the norms per
    sample (max over heads), so samples in a batch never influence each other.
    """
    a = a.float()
    abs_a = a.abs()
    row = abs_a.sum(dim=-1).amax(dim=(1, 2))  # (B,) max row-sum = ||a||_inf
    col = abs_a.sum(dim=-2).amax(dim=(1, 2))  # (B,) max col-sum = ||a||_1
    z = a.transpose(-1, -2) / (row * col)[:, None, None, None]  # (B, H, m, m)
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    with torch.autocast(a.device.type, enabled=False):
        for _ in range(iters):
            az = a @ z
            z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


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
        # The package module owns the weights; both backends read them, so they are one function family.
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
        self.crossover: int | None = None  # `auto`'s switch point, resolved for a device once (`crossover_for`)

    def backend_for(self, n: int, device: torch.device | None = None) -> str:
        """The backend used for a sequence of `n` tokens (cls included) on `device` (default: CPU)."""
        if self.cfg.backend != "auto":
            return self.cfg.backend
        if self.crossover is None:
            self.crossover = crossover_for(self.cfg, device if device is not None else torch.device("cpu"))
        return "exact" if n < self.crossover else "nystrom"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        if self.backend_for(x.shape[1], x.device) == "exact":
            return self.forward_exact(x)
        return self.forward_nystrom(x)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, N, D) -> q, k, v each (B, H, N, dh)."""
        qkv = rearrange(self.nystrom.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return qkv.unbind(0)

    def project_out(self, out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """out, v: (B, H, N, dh) -> (B, N, D), adding the value residual (a depthwise conv along N) if configured."""
        m = self.nystrom
        if m.residual:
            out = out + m.res_conv(v)  # heads as channels, kernel over N
        return m.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, N, dh)
        return self.project_out(out, v)

    def forward_nystrom(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D) by Nystrom approximation with m landmarks.

        Args:
            keep: (B, N) bool, True for real tokens (default: all). Pads added here are always excluded; passing
                `keep=False` entries is how callers exclude their own padding.
        """
        b, n, _ = x.shape
        lm = self.cfg.num_landmarks
        if keep is None:
            keep = torch.ones(b, n, dtype=torch.bool, device=x.device)
        pad = -n % lm
        if pad:  # in front, as the package does, so the value-residual conv sees zeros before token 0
            x = F.pad(x, (0, 0, pad, 0))  # (B, Np, D)
            keep = F.pad(keep, (pad, 0), value=False)  # (B, Np)
        q, k, v = self.qkv(x)  # each (B, H, Np, dh)
        keep_tok = keep[:, None, :, None].to(q.dtype)  # (B, 1, Np, 1)
        q, k, v = q * keep_tok * self.scale, k * keep_tok, v * keep_tok

        seg = (n + pad) // lm  # tokens per landmark
        q_l = reduce(q, "b h (m l) d -> b h m d", "sum", l=seg)  # (B, H, m, dh)
        k_l = reduce(k, "b h (m l) d -> b h m d", "sum", l=seg)
        count = reduce(keep.to(q.dtype), "b (m l) -> b m", "sum", l=seg)  # (B, m) real tokens per landmark
        q_l, k_l = q_l / (count[:, None, :, None] + 1e-8), k_l / (count[:, None, :, None] + 1e-8)
        keep_l = count > 0  # (B, m)

        big = -torch.finfo(q.dtype).max
        kt, kl = keep[:, None, :], keep_l[:, None, :]  # (B, 1, Np), (B, 1, m)
        attn1 = (q @ k_l.transpose(-1, -2)).masked_fill(~(kt[..., None] & kl[:, :, None, :]), big).softmax(-1)
        attn2 = (q_l @ k_l.transpose(-1, -2)).masked_fill(~(kl[..., None] & kl[:, :, None, :]), big).softmax(-1)
        attn3 = (q_l @ k.transpose(-1, -2)).masked_fill(~(kl[..., None] & kt[:, :, None, :]), big).softmax(-1)
        # attn1 (B, H, Np, m), attn2 (B, H, m, m), attn3 (B, H, m, Np)
        attn2_inv = iterative_pinv(attn2, self.cfg.pinv_iterations).to(attn1.dtype)
        out = (attn1 @ attn2_inv) @ (attn3 @ v)  # (B, H, Np, dh)
        return self.project_out(out, v)[:, -n:]  # drop the front pads
