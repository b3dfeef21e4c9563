"""A small convolutional autoencoder whose bottleneck is a quantizer from vector-quantize-pytorch.

The layout follows the VQ-VAE/VQGAN family (van den Oord et al., "Neural Discrete Representation
Learning", NeurIPS 2017; Esser et al., "Taming Transformers for High-Resolution Image Synthesis", CVPR
2021): residual conv blocks, ``log2(factor)`` stride-2 downsamplings, a 1x1 projection to the code space,
and a mirrored decoder with nearest-neighbour upsampling. No attention and no GAN/perceptual loss, so it
trains on a laptop CPU. The bottleneck is chosen by name; the quantizers themselves come from
``vector_quantize_pytorch`` (Phil Wang), never from code written here:

- ``vq``: ``VectorQuantize``: EMA codebook, optional k-means init, dead-code replacement, cosine codes,
  low-dimensional codes (Yu et al., "Vector-quantized Image Modeling with Improved VQGAN", ICLR 2022).
- ``fsq``: ``FSQ`` with ``levels`` (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple",
  ICLR 2024).
- ``lfq``: ``LFQ``, lookup-free binary codes with an entropy loss (Yu et al., "Language Model Beats
  Diffusion", ICLR 2024).
- ``rvq``: ``ResidualVQ``, ``num_quantizers`` codebooks applied to successive residuals (Zeghidour et al.,
  "SoundStream", 2021; Lee et al., "Autoregressive Image Generation using Residual Quantization", CVPR 2022).
  One token's ``num_quantizers`` codes are packed into a single id by mixed radix (level 0 lowest), so the
  vocabulary is ``codebook_size ** num_quantizers`` and ``Tokens.bits`` stays exact.
- ``kl``: a continuous Gaussian bottleneck (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
  the "KL-f" autoencoders of Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
  CVPR 2022): soft tokens are the posterior means.

Pixels enter as ``(B, C, H, W)`` floats in [0, 1]; ``H`` and ``W`` must be multiples of ``factor``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["QUANTIZERS", "AutoencoderConfig", "Autoencoder", "Bottleneck"]

QUANTIZERS = ("vq", "fsq", "lfq", "rvq", "kl")


MAX_CODES = 2**20
"""Largest codebook (fsq: product of the levels) a model is built with; its tensors are allocated whole."""


@dataclass
class AutoencoderConfig:
    """Architecture and bottleneck of a learned tokenizer.

    channels: 1 (grey) or 3 (RGB). factor: downsampling, 4, 8 or 16 (a ``H x W`` image gives
    ``H/factor x W/factor`` tokens). width: channels of the first stage (doubling once per downsampling, at
    most ``4 * width``). blocks: residual blocks per stage. latent_dim: size of the vector that is quantized
    (for ``fsq`` it is ``len(levels)``; others project to their code size). quantizer: one of ``QUANTIZERS``.
    levels (fsq): levels per dimension. codebook_size (vq, rvq, lfq; a power of 2 for lfq). codebook_dim (vq):
    low-dimensional code lookup, None = latent_dim. cosine (vq): cosine-similarity codes. kmeans_init (vq,
    rvq): initialise codebooks with k-means on the first batch. decay (vq, rvq): EMA decay.
    dead_code_threshold (vq, rvq): replace codes whose EMA count falls below this with batch vectors.
    commitment_weight (vq, rvq). num_quantizers (rvq). entropy_weight (lfq). kl_weight (kl).
    """

    channels: int = 3
    factor: int = 4
    width: int = 32
    blocks: int = 1
    latent_dim: int = 4
    quantizer: str = "fsq"
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    codebook_size: int = 1024
    codebook_dim: int | None = None
    cosine: bool = False
    kmeans_init: bool = True
    decay: float = 0.9
    dead_code_threshold: float = 2.0
    commitment_weight: float = 0.25
    num_quantizers: int = 4
    entropy_weight: float = 0.1
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        self.levels = [int(v) for v in self.levels]
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
        if self.factor not in (4, 8, 16):
            raise ValueError(f"factor must be 4, 8 or 16, got {self.factor}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        for name in ("width", "blocks", "latent_dim", "codebook_size", "num_quantizers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.quantizer == "fsq":
            if not self.levels or any(v < 3 for v in self.levels):
                raise ValueError(f"fsq levels must each be at least 3, e.g. 8,5,5,5; got {self.levels}")
            self.latent_dim = len(self.levels)
            if math.prod(self.levels) > MAX_CODES:
                raise ValueError(f"fsq levels {self.levels} give {math.prod(self.levels):,} codes, over the "
                                 f"{MAX_CODES:,} vistok builds (the codebook is held in memory): use fewer or "
                                 "smaller levels, e.g. 8,5,5,5")
        elif self.quantizer != "kl" and int(self.codebook_size) > MAX_CODES:
            raise ValueError(f"codebook_size {int(self.codebook_size):,} is over the {MAX_CODES:,} codes vistok "
                             "builds (the codebook is held in memory): choose a smaller one, e.g. 1024")
        if self.quantizer == "lfq" and not math.log2(self.codebook_size).is_integer():
            raise ValueError(f"lfq needs a power-of-2 codebook_size, got {self.codebook_size}")
        if self.quantizer == "rvq" and self.num_quantizers * math.log2(self.codebook_size) > 62:
            raise ValueError("rvq ids pack num_quantizers codes into one int64: need "
                             f"num_quantizers * log2(codebook_size) <= 62, got {self.num_quantizers} x {self.codebook_size}")

    @property
    def vocab_size(self) -> int | None:
        """Number of distinct ids per token (None for ``kl``, whose tokens are vectors)."""
        if self.quantizer == "fsq":
            return math.prod(self.levels)
        if self.quantizer == "rvq":
            return self.codebook_size ** self.num_quantizers
        if self.quantizer == "kl":
            return None
        return self.codebook_size

    @property
    def codebook_sizes(self) -> list[int]:
        """Sizes of the codebooks whose use is measured: one per rvq level, else the vocabulary."""
        if self.quantizer == "rvq":
            return [self.codebook_size] * self.num_quantizers
        return [] if self.vocab_size is None else [self.vocab_size]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _widths(config: AutoencoderConfig) -> list[int]:
    stages = int(math.log2(config.factor))
    return [config.width * min(2 ** i, 4) for i in range(stages + 1)]


class _Encoder(nn.Module):
    """Full-resolution 3x3 conv, one 4x4 stride-2 conv per downsampling, residual blocks at the lowest
    resolution only (where they are cheapest), then a 1x1 projection to the code space."""

    def __init__(self, config: AutoencoderConfig, out_dim: int) -> None:
        super().__init__()
        w = _widths(config)
        layers: list[nn.Module] = [nn.Conv2d(config.channels, w[0], 3, padding=1), nn.SiLU()]
        for i in range(len(w) - 1):
            layers += [nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1), nn.SiLU()]
        layers += [_ResBlock(w[-1]) for _ in range(config.blocks)]
        layers += [_norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Decoder(nn.Module):
    """Mirror of the encoder with 4x4 stride-2 transposed convolutions."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        w = _widths(config)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, w[0], 3, padding=1)]
        layers += [_ResBlock(w[0]) for _ in range(config.blocks)]
        layers += [_norm(w[0]), nn.SiLU()]
        for i in range(len(w) - 1):
            layers += [nn.ConvTranspose2d(w[i], w[i + 1], 4, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(w[-1], config.channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Bottleneck(nn.Module):
    """The named quantizer over ``(B, N, latent_dim)`` vectors: returns quantized vectors, ids ``(B, N)``
    (None for kl), an auxiliary loss, and per-codebook raw codes ``(B, N, levels)`` for usage statistics."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize

        self.config = c = config
        if c.quantizer == "fsq":
            self.quantizer: nn.Module | None = FSQ(levels=c.levels, dim=c.latent_dim)
        elif c.quantizer == "vq":
            self.quantizer = VectorQuantize(
                dim=c.latent_dim, codebook_size=c.codebook_size, codebook_dim=c.codebook_dim, decay=c.decay,
                kmeans_init=c.kmeans_init, threshold_ema_dead_code=c.dead_code_threshold,
                use_cosine_sim=c.cosine, commitment_weight=c.commitment_weight)
        elif c.quantizer == "lfq":
            self.quantizer = LFQ(dim=c.latent_dim, codebook_size=c.codebook_size, entropy_loss_weight=c.entropy_weight)
        elif c.quantizer == "rvq":
            self.quantizer = ResidualVQ(
                dim=c.latent_dim, codebook_size=c.codebook_size, num_quantizers=c.num_quantizers, decay=c.decay,
                kmeans_init=c.kmeans_init, threshold_ema_dead_code=c.dead_code_threshold,
                commitment_weight=c.commitment_weight)
        else:
            self.quantizer = None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        c, zero = self.config, z.new_zeros(())
        if c.quantizer == "fsq":
            q, ids = self.quantizer(z)
            return q, ids.long(), zero, ids.long()[..., None]
        if c.quantizer in ("vq", "lfq"):
            q, ids, aux = self.quantizer(z)
            return q, ids.long(), aux.sum(), ids.long()[..., None]
        if c.quantizer == "rvq":
            q, codes, aux = self.quantizer(z)
            return q, self.pack(codes.long()), aux.sum(), codes.long()
        raise AssertionError("kl has no quantizer")

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """rvq: ``(..., Q)`` codes -> ``(...)`` ids, level 0 the lowest digit."""
        radix = self.config.codebook_size ** torch.arange(codes.shape[-1], device=codes.device)
        return (codes * radix).sum(-1)

    def unpack(self, ids: torch.Tensor) -> torch.Tensor:
        """rvq: inverse of :meth:`pack`."""
        k = self.config.codebook_size
        return torch.stack([(ids // k ** q) % k for q in range(self.config.num_quantizers)], -1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, N)`` -> quantized vectors ``(B, N, latent_dim)``."""
        q = self.config.quantizer
        if q == "fsq":
            return self.quantizer.indices_to_codes(ids.int())
        if q == "lfq":
            return self.quantizer.indices_to_codes(ids)
        if q == "vq":
            return self.quantizer.get_output_from_indices(ids)
        if q == "rvq":
            return self.quantizer.get_output_from_indices(self.unpack(ids))
        raise AssertionError("kl has no ids")


class Autoencoder(nn.Module):
    """Encoder -> bottleneck -> decoder. See the module docstring."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        out_dim = 2 * config.latent_dim if config.quantizer == "kl" else config.latent_dim
        self.encoder = _Encoder(config, out_dim)
        self.bottleneck = Bottleneck(config)
        self.decoder = _Decoder(config)

    # (B, C, H, W) <-> (B, N, D) with N = h * w in row-major order
    @staticmethod
    def _flat(z: torch.Tensor) -> torch.Tensor:
        return z.flatten(2).transpose(1, 2)

    @staticmethod
    def _unflat(z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], *grid)

    def _check(self, pixels: torch.Tensor) -> None:
        f = self.config.factor
        if pixels.ndim != 4 or pixels.shape[1] != self.config.channels:
            raise ValueError(f"expected (B, {self.config.channels}, H, W) pixels, got {tuple(pixels.shape)}")
        if pixels.shape[2] % f or pixels.shape[3] % f:
            raise ValueError(f"image sides must be multiples of factor={f}, got {pixels.shape[3]}x{pixels.shape[2]}")

    def forward(self, pixels: torch.Tensor) -> dict[str, Any]:
        """Training pass: reconstruction, ids (or None), codes for usage, auxiliary loss, and posterior stats for kl."""
        self._check(pixels)
        h = self.encoder(pixels * 2 - 1)
        grid = (h.shape[2], h.shape[3])
        out: dict[str, Any] = {"grid": grid}
        if self.config.quantizer == "kl":
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
            out.update(ids=None, codes=None, aux=self.config.kl_weight * kl, kl=kl)
        else:
            q, ids, aux, codes = self.bottleneck(self._flat(h))
            z = self._unflat(q, grid)
            out.update(ids=ids, codes=codes, aux=aux)
        out["reconstruction"] = self.decode_latents(z)
        return out

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim, h, w)`` -> pixels in [0, 1] (clamped)."""
        return ((self.decoder(z) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixels -> ids ``(B, N)`` (or posterior means ``(B, N, latent_dim)`` for kl) and the ``(h, w)`` grid."""
        self._check(pixels)
        h = self.encoder(pixels * 2 - 1)
        grid = (h.shape[2], h.shape[3])
        if self.config.quantizer == "kl":
            return self._flat(h.chunk(2, dim=1)[0]), grid
        return self.bottleneck(self._flat(h))[1], grid

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Ids ``(B, N)`` or latents ``(B, N, latent_dim)`` on ``grid`` -> pixels ``(B, C, H, W)`` in [0, 1]."""
        z = tokens if self.config.quantizer == "kl" else self.bottleneck.lookup(tokens)
        return self.decode_latents(self._unflat(z.to(self.decoder_dtype), grid))

    @property
    def decoder_dtype(self) -> torch.dtype:
        """The dtype the decoder runs in (float32 unless the model was converted)."""
        return next(self.decoder.parameters()).dtype
