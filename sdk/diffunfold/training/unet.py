"""The regulariser network F_theta of Diff-Unfolding: a U-Net of the ADM / EDM family.

Architecture (Dhariwal & Nichol's ADM, with EDM's Fourier noise embedding):

* noise conditioning: Fourier features of ``c_noise`` (EDM: ``ln(sigma) / 4``) at fixed random
  frequencies -> Linear -> SiLU -> Linear -> SiLU. With ``num_stages > 0`` one network serves all
  K unfolding stages and a learned stage embedding joins the noise embedding;
* residual blocks with ADM's scale/shift modulation ``norm(h) * (1 + scale) + shift``;
* multi-head self-attention at chosen resolutions and in the middle block;
* encoder / middle / decoder with concatenated skip connections (ADM layout: ``num_blocks``
  blocks per level going down, ``num_blocks + 1`` coming up).

Every branch that writes into a residual path ends in a zero-initialised layer, and so does the
output convolution: a freshly built network outputs exactly zero (the EDM preconditioning then
starts from the plain skip/denoiser path).

Export notes: nothing in ``forward`` branches on tensor values or on H, W, B (input checks are
skipped while tracing), attention is a plain matmul + softmax computed in float32 (no
``scaled_dot_product_attention``), and there is no batch norm, so the network exports to ONNX with
dynamic batch / height / width and one image's output never depends on the rest of the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["UNet", "ResBlock", "SelfAttention", "count_parameters", "group_count"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: 32 when it divides ``channels``, else the largest divisor <= 32
    (so narrow test networks, e.g. 16 or 24 channels, still normalise per group)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(channels: int) -> nn.GroupNorm:
    # eps 1e-5 as ADM; large enough to stay meaningful if the network is later run in FP16.
    return nn.GroupNorm(group_count(channels), channels, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias: the branch it ends starts as the identity / zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _tracing() -> bool:
    """True while torch.jit / torch.onnx trace the network: input checks would turn into
    (constant) Python branches on traced sizes, so they are skipped there."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _check_config(
    in_channels,
    out_channels,
    channels,
    head_channels,
    emb_channels,
    channel_mult,
    num_blocks,
    num_stages,
    fourier_features,
    attention_levels,
    **_others,
) -> None:
    """Refuse a U-Net configuration (the ``config`` dict of :class:`UNet`; the keys not checked
    here are ignored) that cannot build a network."""
    if min(in_channels, out_channels, channels, head_channels, emb_channels) < 1:
        raise InputError("in_channels, out_channels, channels, head_channels and emb_channels must all be >= 1")
    if not channel_mult or min(channel_mult) < 1:
        raise InputError(f"channel_mult must be a non-empty sequence of ints >= 1, got {channel_mult}")
    if num_blocks < 0 or num_stages < 0 or fourier_features < 1:
        raise InputError("num_blocks and num_stages must be >= 0, fourier_features >= 1")
    bad = [i for i in attention_levels if not 0 <= i < len(channel_mult)]
    if bad:
        raise InputError(
            f"attention_levels {bad} out of range: there are {len(channel_mult)} levels (0..{len(channel_mult) - 1})"
        )


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> (1 + scale), shift from the embedding ->
    SiLU -> dropout -> conv3x3 (zero-init), plus a 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        # The embedding MLP already ends in SiLU, so a single Linear per block suffices.
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _FusedAttention(torch.autograd.Function):
    """Attention of ``(B, N, C)`` queries, keys and values in ``heads`` heads (channel
    ``h * head_dim + d``), exported as ONE ONNX node, ``com.microsoft::MultiHeadAttention``
    (see ``diffunfold/export/attention.py`` for why that operator). Used only while exporting."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int, scale: float):
        b, n, c = q.shape
        split = lambda t: t.float().reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, d)
        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) * scale, dim=-1)
        return (w @ split(v)).transpose(1, 2).reshape(b, n, c).to(v.dtype)

    @staticmethod
    def symbolic(g, q, k, v, heads: int, scale: float):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels, residual, output projection zero-init.

    The logits and the softmax are computed in float32 whatever the input dtype, so an FP16
    export cannot overflow in q.k (N = H*W terms) or in exp. With ``fused_export`` (set by the
    exporter) the ONNX graph gets one fused attention node instead of MatMul-Softmax-MatMul.
    """

    fused_export = False

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        heads = max(1, channels // head_channels)
        while channels % heads:  # e.g. 224 channels / 64 -> 3 heads does not divide: use 2
            heads -= 1
        self.heads = heads
        self.head_dim = channels // heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.fused_export and torch.onnx.is_in_onnx_export():
            qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (B, N, 3C)
            q, k, v = qkv.chunk(3, dim=-1)
            out = _FusedAttention.apply(q, k, v, self.heads, 1.0 / math.sqrt(self.head_dim))  # (B, N, C)
            return x + self.proj(out.transpose(1, 2).reshape(x.shape))
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.head_dim, -1)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # each (B, heads, head_dim, N)
        logits = torch.matmul(q.float().transpose(-1, -2), k.float())  # (B, heads, N, N)
        weights = torch.softmax(logits * (1.0 / math.sqrt(self.head_dim)), dim=-1).to(v.dtype)
        out = torch.matmul(v, weights.transpose(-1, -2))  # (B, heads, head_dim, N)
        return x + self.proj(out.reshape(x.shape))


class Downsample(nn.Module):
    # 2x2 average pooling rather than a strided conv: parameter-free, a (crude) anti-aliasing
    # low-pass that keeps local means exact, and it pairs with nearest upsampling; the learned
    # mixing happens in the residual blocks around it.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (the conv removes the blockiness)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stack(nn.ModuleList):
    """A run of layers where residual blocks also take the embedding."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """ADM/EDM-style U-Net ``F_theta(x, c_noise[, stage])`` for Diff-Unfolding.

    Parameters
    ----------
    in_channels, out_channels:
        Image channels in and out (e.g. 3 and 3; the conditioning input may add channels).
    channels:
        Base width; level ``i`` has ``channels * channel_mult[i]`` channels.
    channel_mult:
        One entry per resolution level; level ``i`` works at ``H / 2**i``.
    num_blocks:
        Residual blocks per level in the encoder (the decoder has ``num_blocks + 1``).
    attention_levels:
        Level indices that get self-attention after each residual block (encoder and decoder).
    mid_attention:
        Self-attention between the two middle residual blocks.
    head_channels:
        Channels per attention head: ``heads = max(1, ch // head_channels)`` (reduced to a
        divisor of ``ch`` if needed).
    dropout:
        Dropout inside the residual blocks.
    emb_channels:
        Width of the noise (and stage) embedding; default ``4 * channels``.
    fourier_features:
        Number of random frequencies; the embedding MLP sees ``2 * fourier_features`` inputs
        (cos and sin of each).
    fourier_scale:
        Standard deviation of the frequencies (cycles per unit of ``c_noise``), as in EDM.
    num_stages:
        K > 0: one shared network for K unfolding stages, ``forward`` then requires ``stage``.
        0: no stage conditioning.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_blocks: int = 2,
        attention_levels: Sequence[int] = (3,),
        mid_attention: bool = True,
        head_channels: int = 64,
        dropout: float = 0.0,
        emb_channels: int | None = None,
        fourier_features: int = 128,
        fourier_scale: float = 16.0,
        num_stages: int = 0,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_levels = tuple(sorted({int(i) for i in attention_levels}))
        emb_channels = 4 * channels if emb_channels is None else int(emb_channels)
        # Kept so a checkpoint can rebuild the same network.
        config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            channel_mult=channel_mult,
            num_blocks=num_blocks,
            attention_levels=attention_levels,
            mid_attention=mid_attention,
            head_channels=head_channels,
            dropout=dropout,
            emb_channels=emb_channels,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
            num_stages=num_stages,
        )
        _check_config(**config)
        self.config = config
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_stages = num_stages
        self.num_levels = len(channel_mult)

        self._build_embedding(fourier_features, fourier_scale, emb_channels, num_stages)

        # Built in this order so that a seeded initialisation draws the same weights as before.
        ch, skip_chs = self._build_encoder(
            channels, channel_mult, num_blocks, attention_levels, head_channels, emb_channels, dropout
        )
        self.mid = _Stack([ResBlock(ch, ch, emb_channels, dropout)])
        if mid_attention:
            self.mid.append(SelfAttention(ch, head_channels))
        self.mid.append(ResBlock(ch, ch, emb_channels, dropout))
        ch = self._build_decoder(
            ch, skip_chs, channels, channel_mult, num_blocks, attention_levels, head_channels, emb_channels, dropout
        )
        self.out_norm = _norm(ch)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def _build_embedding(self, fourier_features: int, fourier_scale: float, emb_channels: int, num_stages: int):
        """The noise (and stage) embedding MLP. Fixed Fourier frequencies from a fixed seed: the
        same network always sees the same features, and the buffer is persistent so checkpoints
        carry them anyway."""
        freqs = np.random.default_rng(0).standard_normal(fourier_features) * fourier_scale
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32), persistent=True)
        self.map0 = nn.Linear(2 * fourier_features, emb_channels)
        self.map1 = nn.Linear(emb_channels, emb_channels)
        if num_stages > 0:
            # Added to the hidden layer of the MLP (not after it) so that stage and noise level
            # interact non-linearly. Zero-init: all stages start as the same network.
            self.stage_embed = nn.Embedding(num_stages, emb_channels)
            nn.init.zeros_(self.stage_embed.weight)
        else:
            self.stage_embed = None

    def _build_encoder(
        self, channels, channel_mult, num_blocks, attention_levels, head_channels, emb_channels, dropout
    ) -> tuple[int, list[int]]:
        """Input conv and encoder stacks; every stack's output is a skip connection for the decoder.
        Returns the last width and the skip widths."""
        ch = channels * channel_mult[0]
        self.input_conv = nn.Conv2d(self.in_channels, ch, 3, padding=1)
        skip_chs = [ch]
        self.enc = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                stack = _Stack([ResBlock(ch, channels * mult, emb_channels, dropout)])
                ch = channels * mult
                if level in attention_levels:
                    stack.append(SelfAttention(ch, head_channels))
                self.enc.append(stack)
                skip_chs.append(ch)
            if level < self.num_levels - 1:
                self.enc.append(_Stack([Downsample()]))
                skip_chs.append(ch)
        return ch, skip_chs

    def _build_decoder(
        self, ch, skip_chs, channels, channel_mult, num_blocks, attention_levels, head_channels, emb_channels, dropout
    ) -> int:
        """Decoder: num_blocks + 1 blocks per level, each eats one skip (ADM). Returns the last width."""
        self.dec = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            mult = channel_mult[level]
            for i in range(num_blocks + 1):
                stack = _Stack([ResBlock(ch + skip_chs.pop(), channels * mult, emb_channels, dropout)])
                ch = channels * mult
                if level in attention_levels:
                    stack.append(SelfAttention(ch, head_channels))
                if level > 0 and i == num_blocks:
                    stack.append(Upsample(ch))
                self.dec.append(stack)
        assert not skip_chs
        return ch

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one factor 2 per downsampling)."""
        return 2 ** (self.num_levels - 1)

    def _check(self, x: torch.Tensor, c_noise: torch.Tensor, stage) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w, m = x.shape[-2], x.shape[-1], self.size_multiple
        if h % m or w % m:
            raise InputError(
                f"image size {h}x{w} is not supported: H and W must be multiples of {m} "
                f"(2**{self.num_levels - 1} for {self.num_levels} levels); e.g. pad to "
                f"{-(-h // m) * m}x{-(-w // m) * m}"
            )
        if c_noise.numel() not in (1, x.shape[0]):
            raise InputError(
                f"c_noise must have one value per image (shape ({x.shape[0]},)) "
                f"or a single value, got shape {tuple(c_noise.shape)}"
            )
        if isinstance(stage, torch.Tensor) and self.num_stages > 0:
            if stage.numel() not in (1, x.shape[0]):
                raise InputError(f"stage must be an int or a ({x.shape[0]},) tensor, got shape {tuple(stage.shape)}")
            if stage.is_floating_point() or stage.is_complex():
                raise InputError(f"stage must hold integers, got dtype {stage.dtype}")
            if stage.numel() and (int(stage.min()) < 0 or int(stage.max()) >= self.num_stages):
                raise InputError(f"stage values must be in [0, {self.num_stages}), got {stage.flatten().tolist()}")

    def embed(self, c_noise: torch.Tensor, stage=None) -> torch.Tensor:
        """The conditioning fed to every residual block: (B, emb), or (1, emb) when a single
        c_noise (and stage) serves the whole batch."""
        # Fourier features in float32 even if the network runs in FP16: the angles reach
        # ~|c_noise| * 2*pi * 3 * fourier_scale (hundreds of radians), far beyond FP16 accuracy.
        angles = c_noise.float().reshape(-1, 1) * (2 * math.pi * self.freqs.float())
        feats = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
        h = self.map0(feats.to(self.map0.weight.dtype))
        if self.stage_embed is not None:
            if stage is None:
                raise InputError(
                    f"this network is shared by {self.num_stages} unfolding stages: pass "
                    f"stage= (an int or a (B,) integer tensor in [0, {self.num_stages}))"
                )
            if isinstance(stage, numbers.Integral) and not isinstance(stage, bool):
                if not 0 <= stage < self.num_stages:
                    raise InputError(f"stage={stage} out of range [0, {self.num_stages})")
                h = h + self.stage_embed.weight[int(stage)]  # broadcast over the batch
            elif isinstance(stage, torch.Tensor):
                h = h + self.stage_embed(stage.long().reshape(-1))  # (B, emb) or (1, emb)
            else:
                raise InputError(f"stage must be an int or an integer tensor, got {type(stage).__name__}")
        elif stage is not None:
            raise InputError(
                "this network was built without stage conditioning "
                "(num_stages=0) but a stage was given; build it with "
                "num_stages=K to share it across K stages, or drop stage="
            )
        return F.silu(self.map1(F.silu(h)))

    def forward(self, x: torch.Tensor, c_noise, stage=None) -> torch.Tensor:
        """x: (B, in_channels, H, W); c_noise: (B,) (or one value for the whole batch);
        stage: None, an int, or a (B,) integer tensor in [0, num_stages). Returns
        (B, out_channels, H, W)."""
        if not isinstance(c_noise, torch.Tensor):
            c_noise = torch.as_tensor(c_noise, dtype=torch.float32, device=x.device)
        if not _tracing():
            self._check(x, c_noise, stage)
        # (B, emb): row b conditions image b; (1, emb) (one c_noise for all) broadcasts.
        emb = self.embed(c_noise, stage)

        h = self.input_conv(x)
        skips = [h]
        for stack in self.enc:
            h = stack(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for stack in self.dec:
            h = stack(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))
