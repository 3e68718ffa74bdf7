"""VSS block: x + drop_path(SS2D(norm(x))), then x + drop_path(MLP(norm2(x))) if mlp_ratio > 0."""
import torch.nn as nn

from .ss2d import SS2D
from .utils.layers import DropPath, LayerNorm2d, Mlp


class VSSBlock(nn.Module):
    """Pre-norm residual block around :class:`SS2D` (and an MLP when ``mlp_ratio > 0``).

    Args:
        dim (int): channels.
        drop_path (float): stochastic depth rate of this block. Default: 0.
        mlp_ratio (float): MLP hidden = mlp_ratio * dim; 0 disables the MLP (v0). Default: 4.
        ssm_cfg (dict): keyword arguments of :class:`SS2D`.
        recompute_mlp_act (bool): see :class:`Mlp` (``recompute_act``). Default: False.
    """

    def __init__(self, dim, drop_path=0., mlp_ratio=4.0, ssm_cfg=None, recompute_mlp_act=False):
        super().__init__()
        self.norm = LayerNorm2d(dim, feeds_linear=True)
        self.op = SS2D(dim, **(ssm_cfg or {}))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = LayerNorm2d(dim, feeds_linear=True)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), recompute_act=recompute_mlp_act)
        else:
            self.mlp = None

    def forward(self, x):
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
