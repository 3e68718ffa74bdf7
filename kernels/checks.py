"""Input validation shared by the torch and Triton paths: every error names the argument, the
value it got and what was expected, so a wrong call never turns into a silent wrong result."""
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name, t, ndim, dtypes=FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dim() != ndim:
        raise ValueError(f'{name} must have {ndim} dimensions, got shape {tuple(t.shape)}')
    if t.dtype not in dtypes:
        names = ', '.join(str(d).replace('torch.', '') for d in dtypes)
        raise TypeError(f'{name} must have dtype in ({names}), got {t.dtype}')


def _expect_shape(name, t, shape):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f'{name} must have shape {tuple(shape)}, got {tuple(t.shape)}')


def _expect_same_device(ref_name, ref, named):
    for name, t in named:
        if t is not None and t.device != ref.device:
            raise ValueError(f'{name} is on {t.device} but {ref_name} is on {ref.device}; '
                             'all inputs must be on one device')


def check_selective_scan_inputs(u, delta, A, B, C, D=None, delta_bias=None):
    check_tensor('u', u, 3)
    batch, channels, length = u.shape
    check_tensor('delta', delta, 3)
    _expect_shape('delta', delta, (batch, channels, length))
    check_tensor('A', A, 2)
    if A.is_complex() or A.shape[0] != channels:
        raise ValueError(f'A must be real with shape ({channels}, d_state), got '
                         f'{tuple(A.shape)} {A.dtype}')
    d_state = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        check_tensor(name, t, 4)
        if t.shape[0] != batch or t.shape[2] != d_state or t.shape[3] != length:
            raise ValueError(f'{name} must have shape ({batch}, groups, {d_state}, {length}), '
                             f'got {tuple(t.shape)}')
    if B.shape[1] != C.shape[1]:
        raise ValueError(f'B and C must have the same number of groups, got {B.shape[1]} and '
                         f'{C.shape[1]}')
    if channels % B.shape[1] != 0:
        raise ValueError(f'channels ({channels}) must be a multiple of groups ({B.shape[1]})')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None:
            check_tensor(name, t, 1)
            _expect_shape(name, t, (channels, ))
    _expect_same_device('u', u, (('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D),
                                 ('delta_bias', delta_bias)))


def check_ss2d_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, num_directions=4):
    """Shapes of the fused SS2D core; see :func:`vmamba_kernels.ss2d_scan`."""
    k = num_directions
    check_tensor('x', x, 4)
    batch, channels, height, width = x.shape
    if min(x.shape) < 1:
        raise ValueError(f'x must be non-empty, got shape {tuple(x.shape)}')
    length = height * width
    check_tensor('dt_weight', dt_weight, 3)
    if dt_weight.shape[0] != k or dt_weight.shape[1] != channels:
        raise ValueError(f'dt_weight must have shape ({k}, {channels}, dt_rank), got '
                         f'{tuple(dt_weight.shape)}')
    rank = dt_weight.shape[2]
    check_tensor('dt_low', dt_low, 4)
    _expect_shape('dt_low', dt_low, (batch, k, rank, length))
    check_tensor('dt_bias', dt_bias, 2)
    _expect_shape('dt_bias', dt_bias, (k, channels))
    check_tensor('A', A, 2)
    if A.shape[0] != k * channels:
        raise ValueError(f'A must have shape ({k * channels}, d_state), got {tuple(A.shape)}')
    d_state = A.shape[1]
    for name, t in (('Bs', Bs), ('Cs', Cs)):
        check_tensor(name, t, 4)
        _expect_shape(name, t, (batch, k, d_state, length))
    if D is not None:
        check_tensor('D', D, 1)
        _expect_shape('D', D, (k * channels, ))
    _expect_same_device('x', x, (('dt_low', dt_low), ('dt_weight', dt_weight),
                                 ('dt_bias', dt_bias), ('A', A), ('Bs', Bs), ('Cs', Cs),
                                 ('D', D)))


def check_contiguous(named):
    """The Triton path indexes raw memory: refuse strided views instead of reading garbage."""
    for name, t in named:
        if t is not None and not t.is_contiguous():
            raise ValueError(f'{name} must be contiguous (got strides {t.stride()} for shape '
                             f'{tuple(t.shape)}); call .contiguous() first')


def check_triton_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D):
    """What the Triton path needs beyond :func:`check_ss2d_inputs`: contiguous tensors (x may
    be stored channels-last: the channels-last kernels read it so, the others copy it), no
    float64."""
    if not x.is_contiguous(memory_format=torch.channels_last):  # read as it is, or copied
        check_contiguous((('x', x), ))
    check_contiguous((('dt_low', dt_low), ('dt_weight', dt_weight), ('dt_bias', dt_bias),
                      ('A', A), ('Bs', Bs), ('Cs', Cs), ('D', D)))
    if x.dtype == torch.float64:
        raise TypeError('the Triton path takes float32/bfloat16/float16 x, got float64; use '
                        "backend='torch' for float64")


def wants_grad(*tensors):
    """Whether autograd would track a call on ``tensors`` (None entries allowed): grad mode on
    and one of them requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def env_choice(name, choices, default):
    """The value of environment variable ``name``, one of ``choices`` (a dict of value -> what it
    means, or a sequence of values), or ``default`` when it is unset or empty; a clear error
    naming the variable, the values it takes and the value found otherwise."""
    value = os.environ.get(name, '') or default
    if value != default and value not in choices:
        if isinstance(choices, dict):
            allowed = ', '.join(f'{key} ({meaning})' for key, meaning in choices.items())
        else:
            allowed = ', '.join(choices)
        raise ValueError(f'${name} must be one of {allowed}, got {value!r}')
    return value


def env_int(name, default, what):
    """The integer in environment variable ``name`` (``default`` when unset or empty); a clear
    error naming the variable when it is not an integer (``what`` it counts)."""
    value = os.environ.get(name, '')
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f'${name} must be an integer number of {what}, got {value!r}') from None
