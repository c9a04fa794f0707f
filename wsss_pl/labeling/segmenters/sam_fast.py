"""SAM image encoder fast path: fused attention on segment-anything's own modules.

``SdpaAttention`` is segment-anything's ``Attention`` with its forward rewritten around
``torch.nn.functional.scaled_dot_product_attention``: the decomposed relative position terms of
``add_decomposed_rel_pos`` (MViTv2) become an additive ``attn_mask`` bias

    bias[b, n, (qh, qw), (kh, kw)] = q[b, n, qh, qw] . Rh[qh, kh] + q[b, n, qh, qw] . Rw[qw, kw]

(``q`` unscaled, ``Rh``/``Rw`` from segment-anything's ``get_rel_pos``), so the softmax and the
value product run in a fused kernel (memory-efficient attention on CUDA, which accepts an
arbitrary bias; the math kernel elsewhere) without materialising the [N, N] score matrix twice.
The math is the same as the original forward, only the floating-point order of operations
differs: fp32 embeddings agree to about 1e-5 (tested in ``tests/test_sam_fast.py``).

The swap changes the class of each ``Attention`` instance in place, so the module keeps its
parameters, its state-dict keys and the official checkpoints load unchanged, before or after.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from torch import Tensor

SamAttention = Literal["original", "sdpa"]


def relative_position_bias(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]
) -> Tensor:
    """Decomposed relative position terms as an additive attention bias.

    Args:
        q: queries [B, heads, H * W, C] (not multiplied by the softmax scale).
        rel_pos_h, rel_pos_w: the attention's embeddings [2 * H - 1, C] and [2 * W - 1, C]
            (interpolated by ``get_rel_pos`` when the grid differs).
        size: (H, W) of the token grid (queries and keys alike: SAM's self-attention).

    Returns:
        [B, heads, H * W, H * W] bias in ``q``'s dtype.
    """
    height, width = size
    batch, heads, _, dim = q.shape
    rh = get_rel_pos(height, height, rel_pos_h).to(q.dtype)  # [H, H, C]
    rw = get_rel_pos(width, width, rel_pos_w).to(q.dtype)  # [W, W, C]
    r_q = q.reshape(batch, heads, height, width, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)  # [B, n, H, W, kH]
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)  # [B, n, H, W, kW]
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # [B, n, H, W, kH, kW]
    return bias.reshape(batch, heads, height * width, height * width)


class SdpaAttention(Attention):
    """segment-anything's ``Attention`` computed with ``scaled_dot_product_attention``.

    Same parameters and state dict as ``Attention``; instances are made by ``use_attention``
    (class swap in place), never constructed directly.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, dim] tokens (a window or the whole grid) -> [B, H, W, dim]."""
        batch, height, width, _ = x.shape
        # [3, B, heads, H * W, head_dim]
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, (height, width))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def use_attention(encoder: ImageEncoderViT, attention: SamAttention) -> ImageEncoderViT:
    """Switch every attention block of ``encoder`` to ``attention`` in place; returns it.

    ``original`` is segment-anything's forward; ``sdpa`` is ``SdpaAttention``. Parameters and
    state dict are untouched, so switching back and forth is free.
    """
    if attention not in ("original", "sdpa"):
        raise ValueError(f"sam attention must be 'original' or 'sdpa', got {attention!r}")
    target = SdpaAttention if attention == "sdpa" else Attention
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = target
    return encoder


def compile_blocks(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``: the state-dict
    keys stay as they are, unlike wrapping the module); the first call per input shape compiles."""
    for block in encoder.blocks:
        block.compile(dynamic=False)
    return encoder
