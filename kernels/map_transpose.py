"""Transposed maps for the d_state 1 kernels' column walks.

``transposed``: a (batch, C, H, W) map copied to (batch, C, W, H) in tiles, each read along its
rows and written along its columns (ATen's ``t.transpose(2, 3).contiguous()`` is an
elementwise copy with one side strided). ``add_transposed``: a map plus the transpose of
another, in one pass: how the d_state 1 scan adds the column directions' y or dx (walked on the
transposed map) into the rows' and casts the sum to the map's dtype, where
``a.add_(t.transpose(2, 3))`` and ``.to(dtype)`` read and write the float32 map twice more."""
import triton
import triton.language as tl


def _tile(height, width):
    """Tile sides (powers of two, 16 to 64, each the map's side rounded up) and warps: a 56 x
    56 plane in one 64 x 64 tile on 8 warps, a 28 x 28 one in a 32 x 32 tile on 4 (on the H100
    32-tiles ran at half speed on 56 x 56 maps, 64-tiles at a quarter on 28 x 28 ones)."""
    block_h, block_w = (min(64, max(16, triton.next_power_of_2(n))) for n in (height, width))
    size = block_h * block_w
    return block_h, block_w, 8 if size >= 4096 else 4 if size >= 1024 else 2


def launch_by_tiles(kernel, args, shape, tile=None):
    """``kernel(*args, H, W)`` over a (batch, C, H, W) ``shape``: one row of programs per
    (image, channel) plane, tiles of ``tile`` = (rows, columns, warps), default :func:`_tile`."""
    batch, channels, height, width = shape
    block_h, block_w, warps = tile or _tile(height, width)
    grid = (batch * channels, triton.cdiv(height, block_h), triton.cdiv(width, block_w))
    kernel[grid](*args, height, width, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=warps)


@triton.jit
def _program_tile(H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile of the grid of :func:`launch_by_tiles`: the offset of its (image,
    channel) plane, its rows h and columns w in the (H, W) map, and which of them lie inside."""
    plane = tl.program_id(0).to(tl.int64) * H * W
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    w = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    return plane, h, w, (h[:, None] < H) & (w[None, :] < W)


@triton.jit
def _add_transposed_kernel(a_ptr, t_ptr, out_ptr, H, W, BLOCK_H: tl.constexpr,
                           BLOCK_W: tl.constexpr):
    plane, h, w, mask = _program_tile(H, W, BLOCK_H, BLOCK_W)
    row_major = plane + h[:, None] * W + w[None, :]
    a = tl.load(a_ptr + row_major, mask=mask, other=0.).to(tl.float32)
    t = tl.load(t_ptr + plane + w[None, :] * H + h[:, None], mask=mask, other=0.).to(tl.float32)
    tl.store(out_ptr + row_major, (a + t).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _transpose_kernel(t_ptr, out_ptr, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane, h, w, mask = _program_tile(H, W, BLOCK_H, BLOCK_W)
    v = tl.load(t_ptr + plane + h[:, None] * W + w[None, :], mask=mask)
    tl.store(out_ptr + plane + w[None, :] * H + h[:, None], v, mask=mask)


def transposed(t):
    """``t.transpose(2, 3).contiguous()`` for a contiguous (batch, C, H, W) ``t``, by tiles."""
    if t.dim() != 4 or not t.is_contiguous():
        raise ValueError(f'transposed: t must be a contiguous (batch, C, H, W) map; got shape '
                         f'{tuple(t.shape)}, strides {t.stride()}')
    batch, channels, height, width = t.shape
    out = t.new_empty((batch, channels, width, height))
    if out.numel():
        launch_by_tiles(_transpose_kernel, (t, out), t.shape)
    return out


def add_transposed(a, t, out):
    """``out = a + t.transpose(2, 3)`` in ``out``'s dtype (the sum in float32): ``a`` and ``out``
    contiguous (batch, C, H, W), ``t`` contiguous (batch, C, W, H); ``out`` may be ``a``."""
    batch, channels, height, width = a.shape
    if t.shape != (batch, channels, width, height) or out.shape != a.shape:
        raise ValueError(f'add_transposed: t must be a.transpose(2, 3)-shaped and out a-shaped; '
                         f'got a {tuple(a.shape)}, t {tuple(t.shape)}, out {tuple(out.shape)}')
    if not (a.is_contiguous() and t.is_contiguous() and out.is_contiguous()):
        raise ValueError('add_transposed: a, t and out must be contiguous')
    launch_by_tiles(_add_transposed_kernel, (a, t, out), a.shape)
    return out


def add_transposed_reference(a, t, dtype):
    """The same sum in torch (for tests): one float32 addition, rounded once to ``dtype``."""
    return (a.float() + t.float().transpose(2, 3)).to(dtype)
