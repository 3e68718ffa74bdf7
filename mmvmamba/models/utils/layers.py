"""Channel-first building blocks: the whole model keeps (B, C, H, W) end to end."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p=0.):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f'drop path probability must be in [0, 1), got {p}')
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (parameters shaped like nn.LayerNorm's)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear layer applied per pixel of an NCHW map (a 1x1 conv with a 2-D weight, so its
    state-dict entry has the shape the authors' checkpoints use)."""

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, per pixel."""

    def __init__(self, dim, hidden, drop=0.):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
