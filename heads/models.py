"""Small task heads over frozen encoder features, each rebuilt from its `HeadConfig`.

Read top to bottom: `Reduce -> AttentionPool -> LinearProbe -> MlpHead -> AttnPoolHead -> DenseDecoder -> Head`.

- `Reduce`: every head's first stage, fitted once at fit time and frozen (buffers, so it travels in the weights):
  per-channel standardisation, then for token grids wider than `HeadConfig.reduce` a whitened projection on the
  training tokens' top principal axes. The trainable part then costs the same per token whatever the encoder width
  (a 1024-wide grid of 1k frames is 246M numbers: a learned first layer on it dominated every fit), and the fit
  projects the features once instead of every step.

- `LinearProbe`: the baseline head. Pooled vector -> linear; for dense tasks a per-token linear map (1x1 conv).
- `MlpHead`: pooled vector -> MLP.
- `AttnPoolHead`: per-token MLP, learned 2-D position table, a few learned queries cross-attending over the tokens
  (attention pooling as in Set Transformer's PMA, Lee et al. 2019, and CoCa/V-JEPA attentive probes), then an MLP.
  Reads the grid, so it can tell *where* something is, which a pooled vector has averaged away.
- `DenseDecoder`: 1x1 projection of D down, 3x3 convs with 2x bilinear upsampling (a light SETR-PUP-style decoder,
  Zheng et al. 2021); the task upsamples its output to the label size.

Shapes: B batch, gh/gw grid, N = gh*gw tokens, D input width, P reduced width, C decoder channels, Q queries,
H attention heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

HeadKind = Literal["auto", "linear", "mlp", "attnpool", "dense"]


@dataclass
class HeadConfig:
    """A head's architecture; `in_dim`, `out_dim`, `grid` and `dense` are filled in from the features and task.

    Args:
        kind: `linear` probe, `mlp` on the pooled vector, `attnpool` over the grid, `dense` decoder, or `auto`
            (dense tasks -> `dense`; scalar tasks -> `attnpool` on grids, `mlp` on pooled vectors).
        in_dim: feature width D.  out_dim: outputs per frame (or per pixel for dense tasks).
        grid: (gh, gw) of grid features, (0, 0) for pooled ones.  dense: the task predicts a map.
        hidden: width of MLPs and the attention-pooling space.
        queries: learned queries Q of the attention pool.  heads: attention heads H.
        mlp_layers: hidden layers of the output MLP.
        pos_embed: learned (gh, gw) position table in the attention pool.
        channels: decoder channels C.  upsample: number of 2x upsampling stages in the decoder.
        dropout: dropout before the output layer.
        prior: dense heads add a per-pixel scene prior (the training labels' per-pixel log-depth mean or log class
            frequency, a fixed camera's layout) at `prior_size` to the upsampled decoder output, which then only has
            to learn what differs from the static scene (people, lighting). Without it a decoder at grid resolution
            cannot draw the layout's sharp edges that the per-pixel baseline gets for free.
        prior_size: (H, W) of the prior (the label size), filled in at fit time.
        reduce: token grids wider than this are projected to this many whitened principal axes before the head
            (0 = never, and no `pooled_axes` either).
        pooled_axes: filled in at fit time: a pooled vector at least WIDE_POOLED times wider than its training
            frames is projected onto the frames - 1 axes they span (after centring), not whitened (see `Reduce`);
            0 = standardised only (narrower vectors, and heads fitted before it).
    """

    kind: HeadKind = "auto"
    in_dim: int = 0
    out_dim: int = 1
    grid: tuple[int, int] = (0, 0)
    dense: bool = False
    hidden: int = 64
    queries: int = 4
    heads: int = 4
    mlp_layers: int = 1
    pos_embed: bool = True
    channels: int = 64
    upsample: int = 1
    dropout: float = 0.0
    prior: bool = False
    prior_size: tuple[int, int] = (0, 0)
    reduce: int = 64
    pooled_axes: int = 0

    @property
    def on_grid(self) -> bool:
        """The head reads token grids (gh, gw, D), not pooled vectors."""
        return self.grid[0] * self.grid[1] > 0


def reduced_dim(cfg: HeadConfig) -> int:
    """P: the width the trainable part of the head sees."""
    p = cfg.reduce if cfg.on_grid else cfg.pooled_axes
    return p if 0 < p < cfg.in_dim else cfg.in_dim


# pooled vectors this many times wider than the training frames are projected onto their span. Measured on people
# count pixel vectors (fth eval's pixel column; README, "Pooled heads on vectors much wider than their frames"): the
# projection helped at 720 / 80 = 9x and every wider ratio, and cost 8% at 720 / 256 = 2.8x.
WIDE_POOLED = 4


def pooled_axes_for(cfg: HeadConfig, n_train: int) -> int:
    """`pooled_axes` for a pooled head of width cfg.in_dim fitted on n_train frames: the n_train - 1 axes they span
    when the width is at least WIDE_POOLED x n_train, else 0 (see HeadConfig and `Reduce`)."""
    if cfg.on_grid or cfg.reduce <= 0 or cfg.in_dim < WIDE_POOLED * n_train:
        return 0
    return max(1, n_train - 1)


def principal_axes(z: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top p eigenvalues (P,) of z's (rows, D) second-moment matrix z'z / (rows - 1) and their unit axes (D, P),
    largest first. With fewer rows than D (a pooled head's few dozen frames) from the (rows, rows) Gram matrix zz':
    the same axes (up to sign), and 2880-wide pixel vectors of 24 frames take milliseconds instead of 5 s."""
    rows, d = z.shape
    if p <= rows < d:
        zd = z.double()
        vals, u = torch.linalg.eigh(zd @ zd.T)  # ascending
        vals, u = vals[-p:].flip(0), u[:, -p:].flip(1)
        axes = zd.T @ u  # (D, P): column i has norm sqrt(vals[i])
        return vals / max(1, rows - 1), axes / axes.norm(dim=0).clamp_min(1e-12)
    vals, vecs = torch.linalg.eigh((z.T @ z).double() / max(1, rows - 1))  # (D, D), ascending
    return vals[-p:].flip(0), vecs[:, -p:].flip(1)


SPAN_TOL = 1e-9  # Reduce: principal axes with an eigenvalue below this share of the largest are not spanned
RANGE_MARGIN = 0.1  # Reduce: inputs are clamped to the training range widened by this share of it on each side


class Reduce(nn.Module):
    """x: (..., D) -> (..., P): clamped to the training range (widened by RANGE_MARGIN of it), (x - mean) / std,
    then (when P < D) times a PCA basis (D, P): whitened for token grids (each axis at unit variance), for pooled
    vectors (`whiten=False`) the axes as they are, all scaled by one factor (their mean variance to 1).

    Pooled vectors wider than the training frames span: Adam moves each first-layer weight by about the learning rate
    per step, so over D inputs a frame's first-layer output moves by about D x lr per step, and on a frame with a
    component outside the training frames' span nothing in the loss ever held it back. Fitted on 24 frames, people
    count heads on 2880-wide pixel vectors answered e^20 people in 5 of 10 seeds. Projected onto the 23 axes the
    frames span, every seed lands at 0.92-1.05 MAE. Not whitened: with as many axes as frames, whitening weighs the
    frames' smallest differences (noise) as much as their largest, and the same heads landed at 1.33-2.05.

    The clamp: a feature that hardly moves in the training frames (a burned-in clock's date digits, the sim's
    frame-index stamp under video compression) says nothing a head can learn from, and standardised by its tiny
    spread its first change after training is hundreds of sigmas: people count heads fitted on 24 early frames
    answered 147 and 8e7 people. Clamped, such a feature stays near where training left it (at most RANGE_MARGIN of
    its range beyond), and no input can reach further from the training frames than that; ordinary features keep the
    same room to extrapolate (a head fitted on a few dozen labels is not to be trusted much further anyway).
    """

    def __init__(self, in_dim: int, out_dim: int, whiten: bool = True):
        super().__init__()
        self.whiten = whiten
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.register_buffer("low", torch.full((in_dim,), -math.inf))
        self.register_buffer("high", torch.full((in_dim,), math.inf))
        self.register_buffer("basis", torch.eye(in_dim, out_dim) if out_dim < in_dim else None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("low", "high"):  # heads saved before the clamp existed have no range: they load unclamped
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, x, chunk: int = 256, max_rows: int = 65536, seed: int = 0) -> None:
        """Statistics from training features x (B, ..., D) (any array that slices to float), read in chunks of
        frames; the PCA basis from at most `max_rows` token rows spread over the frames."""
        d = x.shape[-1]
        n, mean, m2 = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        lo, hi = torch.full((d,), math.inf), torch.full((d,), -math.inf)
        sample = []
        gen = torch.Generator().manual_seed(seed)
        for i in range(0, x.shape[0], chunk):
            part = as_float(x[i : i + chunk]).reshape(-1, d)  # (b * ..., D)
            # two-pass moments of the chunk in float32, merged across chunks in float64 (Chan et al.'s update)
            b = part.shape[0]
            lo, hi = torch.minimum(lo, part.amin(0)), torch.maximum(hi, part.amax(0))
            mean_c = part.sum(0) / b
            m2_c, delta = (part - mean_c).square_().sum(0).double(), mean_c.double() - mean
            mean, m2, n = mean + delta * b / (n + b), m2 + m2_c + delta * delta * n * b / (n + b), n + b
            if self.basis is not None:  # this chunk's share of the PCA sample
                k = min(part.shape[0], -(-max_rows * min(chunk, x.shape[0] - i) // x.shape[0]))
                sample.append(part[torch.randperm(part.shape[0], generator=gen)[:k]])
        self.mean.copy_(mean.float())
        self.std.copy_((m2 / n).sqrt().float().clamp_min(1e-6))
        margin = RANGE_MARGIN * (hi - lo)
        self.low.copy_(lo - margin)
        self.high.copy_(hi + margin)
        if self.basis is not None:
            z = (torch.cat(sample) - self.mean) / self.std  # (rows, D), standardised: float32 products are enough
            top, axes = principal_axes(z, self.basis.shape[1])
            # axes the rows do not really span (repeated rows: an ensemble member's bootstrap resample) are numerical
            # noise, off the span like everything the projection is for: zeroed, so the head reads nothing there
            real = top > SPAN_TOL * top[0].clamp_min(1e-30)
            kept = top[real].mean() if real.any() else torch.ones((), dtype=top.dtype)
            scale = top.clamp_min(1e-6).sqrt() if self.whiten else kept.clamp_min(1e-6).sqrt()
            self.basis.copy_((axes * real / scale).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (torch.clamp(x, self.low, self.high) - self.mean) / self.std
        return z if self.basis is None else z @ self.basis


def as_float(x) -> torch.Tensor:
    """Features as a float32 tensor: numpy arrays and float16 memory maps are copied once, tensors keep their device."""
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def mlp(d_in: int, hidden: int, d_out: int, layers: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(d_in, hidden), nn.GELU()]
        d_in = hidden
    return nn.Sequential(*mods, nn.Dropout(dropout), nn.Linear(d_in, d_out))


class AttentionPool(nn.Module):
    """Q learned queries cross-attend over tokens: (B, N, d) -> (B, Q, d)."""

    def __init__(self, dim: int, queries: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention-pool width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of the queries over `to_kv(x)`, computed without projecting every token: the
        queries are folded into the key weights (a key bias adds a constant per query, which softmax ignores), and the
        tokens are pooled before the value projection (the weights sum to 1). Per token that is 2 Q H d multiply-adds
        instead of 2 d^2; the parameters and the function are those of the plain form."""
        d, h = x.shape[-1], self.heads
        w_k, w_v = (rearrange(w, "(h e) d -> h e d", h=h) for w in self.to_kv.weight.chunk(2, dim=0))  # (H, e, d)
        q = rearrange(self.query, "q (h e) -> h q e", h=h)  # (H, Q, e)
        qk = torch.einsum("hqe,hed->hqd", q, w_k) * (d // h) ** -0.5  # (H, Q, d)
        attn = (x @ rearrange(qk, "h q d -> d (h q)")).softmax(dim=1)  # (B, N, H*Q)
        pooled = rearrange(attn.transpose(1, 2) @ x, "b (h q) d -> b h q d", h=h)  # (B, H, Q, d)
        out = torch.einsum("bhqd,hed->bqhe", pooled, w_v)  # (B, Q, H, e)
        return self.to_out(rearrange(out, "b q h e -> b q (h e)") + self.to_kv.bias[d:])


class LinearProbe(nn.Module):
    """Pooled (B, D) -> (B, out); for dense tasks grid (B, gh, gw, D) -> (B, out, gh, gw) by a per-token linear map."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.in_dim, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.dense:
            return rearrange(self.fc(x), "b gh gw o -> b o gh gw")
        return self.fc(x.mean(dim=(1, 2)) if x.dim() == 4 else x)


class MlpHead(nn.Module):
    """Pooled (B, D) (grids are mean-pooled first) -> MLP -> (B, out)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.mlp = mlp(cfg.in_dim, cfg.hidden, cfg.out_dim, cfg.mlp_layers, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=(1, 2)) if x.dim() == 4 else x)


class AttnPoolHead(nn.Module):
    """Grid (B, gh, gw, D) -> per-token MLP -> + positions -> attention pool (B, Q, d) -> MLP -> (B, out)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        gh, gw = cfg.grid
        if gh * gw == 0:
            raise ValueError("an attention-pooling head reads token grids; got pooled features (use kind mlp/linear)")
        self.cfg = cfg
        d = cfg.hidden
        self.token_mlp = nn.Sequential(nn.Linear(cfg.in_dim, d), nn.GELU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.zeros(1, gh * gw, d)) if cfg.pos_embed else None
        self.pre = nn.LayerNorm(d)
        self.pool = AttentionPool(d, cfg.queries, cfg.heads)
        self.post = nn.LayerNorm(cfg.queries * d)
        self.out = mlp(cfg.queries * d, d, cfg.out_dim, cfg.mlp_layers, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.token_mlp(rearrange(x, "b gh gw d -> b (gh gw) d"))  # (B, N, d)
        if self.pos is not None:
            tokens = tokens + self.pos
        pooled = self.pool(self.pre(tokens))  # (B, Q, d)
        return self.out(self.post(rearrange(pooled, "b q d -> b (q d)")))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.GELU())


class DenseDecoder(nn.Module):
    """Grid (B, gh, gw, D) -> 1x1 down to C -> 3x3 conv -> [2x up, 3x3 conv] x upsample -> (B, out, gh*2^u, gw*2^u)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if not cfg.on_grid:
            raise ValueError("a dense decoder reads token grids; got pooled features")
        self.cfg = cfg
        c = cfg.channels
        self.proj = nn.Conv2d(cfg.in_dim, c, 1)
        self.stem = _conv_block(c, c)
        self.ups = nn.ModuleList(_conv_block(c, c) for _ in range(cfg.upsample))
        self.out = nn.Sequential(nn.Dropout2d(cfg.dropout), nn.Conv2d(c, cfg.out_dim, 1))
        ph, pw = cfg.prior_size if cfg.prior else (0, 0)
        self.register_buffer("prior", torch.zeros(1, cfg.out_dim, ph, pw) if ph * pw else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(rearrange(x, "b gh gw d -> b d gh gw"))  # (B, C, gh, gw)
        x = self.stem(x)
        for block in self.ups:
            x = block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.out(x)  # (B, out, h, w)
        if self.prior is None:
            return x
        return F.interpolate(x, size=self.prior.shape[-2:], mode="bilinear", align_corners=False) + self.prior


HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearProbe,
    "mlp": MlpHead,
    "attnpool": AttnPoolHead,
    "dense": DenseDecoder,
}


class Head(nn.Module):
    """A fitted head: the frozen `Reduce` stage, then the trainable body chosen by `kind` (built on P inputs)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        p = reduced_dim(cfg)
        self.reduce = Reduce(cfg.in_dim, p, whiten=cfg.on_grid)
        self.body = HEADS[resolve_kind(cfg)](replace(cfg, in_dim=p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.reduce(x))


def resolve_kind(cfg: HeadConfig) -> str:
    """`auto` -> the default head for the task and feature form."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.dense:
        return "dense"
    return "attnpool" if cfg.on_grid else "mlp"


def build_head(cfg: HeadConfig) -> nn.Module:
    """The head described by `cfg` (with `kind` resolved), freshly initialised."""
    kind = resolve_kind(cfg)
    if cfg.dense and kind in ("mlp", "attnpool"):
        raise ValueError(f"head kind {kind!r} predicts one vector per frame; a dense task needs 'dense' or 'linear'")
    if cfg.dense and not cfg.on_grid:
        raise ValueError("a dense task needs token-grid features (B, gh, gw, D), not pooled vectors")
    if not cfg.dense and kind == "dense":
        raise ValueError("head kind 'dense' predicts maps; a scalar task needs 'linear', 'mlp' or 'attnpool'")
    if cfg.in_dim <= 0:
        raise ValueError("HeadConfig.in_dim is unset: build heads through heads.fit, which reads it from the features")
    return Head(cfg)


def output_bias(head: nn.Module) -> torch.Tensor | None:
    """The bias of the head's last layer (the one producing the outputs)."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    return last.bias


@torch.no_grad()
def init_output_bias(head: nn.Module, bias: torch.Tensor | None) -> None:
    """Start the head at the task's naive prediction (e.g. log mean count) so fitting begins at the baseline."""
    target = output_bias(head)
    if bias is not None and target is not None:
        target.copy_(bias.reshape(target.shape))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
