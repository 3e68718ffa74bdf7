"""Stem and downsampling layers. Index positions inside the nn.Sequential follow the authors'
state-dict keys (their channel-last permutes become identities here), so released weights load
by name: ``patch_embed.{0,2,5,7}`` and ``layers.i.downsample.{1,3}``."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils.layers import LayerNorm2d, Linear2d


def conv_stem(in_channels, dim):
    """Patch embed v2 (final models): conv 3x3 s2 -> norm -> GELU -> conv 3x3 s2 -> norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, dim // 2, 3, 2, 1), nn.Identity(), LayerNorm2d(dim // 2),
        nn.Identity(), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, 2, 1), nn.Identity(),
        LayerNorm2d(dim))


def patchify_stem(in_channels, dim, patch_size=4):
    """Patch embed v1 (v0 models): conv 4x4 s4 -> norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, dim, patch_size, patch_size), nn.Identity(), LayerNorm2d(dim))


def conv_downsample(dim, out_dim):
    """Downsample v3 (final models): conv 3x3 s2 -> norm."""
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, 2, 1), nn.Identity(),
                         LayerNorm2d(out_dim))


class PatchMerging2d(nn.Module):
    """Downsample v1 (v0 models): concatenate each 2x2 neighbourhood (Swin's order) -> norm ->
    Linear 4C -> 2C. Odd sizes are padded, so the output is ceil(H / 2) x ceil(W / 2) like a
    stride-2 conv."""

    def __init__(self, dim, out_dim):
        super().__init__()
        self.norm = LayerNorm2d(4 * dim, feeds_linear=True)
        self.reduction = Linear2d(4 * dim, out_dim, bias=False)

    def forward(self, x):
        if x.shape[2] % 2 or x.shape[3] % 2:
            x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        x = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2],
                       x[..., 1::2, 1::2]], dim=1)
        return self.reduction(self.norm(x))
