"""Resume exactly where training stopped: the random number generators travel in the checkpoint.

mmengine's resume restores the weights, the optimizer, the schedulers, the message hub and the
sampler's epoch, then trains on from freshly seeded generators: drop path masks, random
augmentations in the main process and dropout of the resumed epochs differ from those of an
uninterrupted run, so the two diverge after the first resumed step. With this hook the state of
Python's, numpy's and torch's generators (CPU and CUDA) is saved with every checkpoint and put
back when a run resumes from it. Validation is also kept out of the training stream: the
generators are put back after each validation as they were before it (creating the validation
data loader's iterator draws a number from torch's generator). So the training run does not
depend on when it validates, and a single-process run resumed after epoch k (which validated
there because epoch k was its last) reaches the same weights after epoch k + 1, bitwise, as the
run that never stopped (tests/test_classification.py).

In a distributed run each process restores the state saved by rank 0 (the only one that writes
the checkpoint), so their generators agree with each other but not with the uninterrupted run's;
data loader workers are seeded by mmengine from the configured seed and are not affected.
"""
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

KEY = 'random_state'


def capture() -> dict:
    """The generators' states as tensors and plain Python values (loadable with
    ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=pos,
                            has_gauss=has_gauss, gauss=gauss))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Put back the states :func:`capture` returned."""
    random.setstate(_as_tuples(state['python']))
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        saved = state['cuda'][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(saved)


def _as_tuples(value):
    """random.setstate wants the nested tuples getstate gave (a checkpoint may hold lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the random generators' state in each checkpoint; restore it when resuming (not
    when a checkpoint is only loaded to start from, ``load_from`` without ``resume``).

    Add to a config as ``custom_hooks = [dict(type='RandomStateHook')]`` (the classification,
    detection and segmentation configs of mmvmamba do). A checkpoint without the state (saved
    without this hook) resumes as mmengine does, with a warning.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._training_state = None  # set while a validation runs

    def before_val(self, runner) -> None:
        self._training_state = capture()

    def after_val(self, runner) -> None:
        if self._training_state is not None:
            restore(self._training_state)
            self._training_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # a checkpoint saved during validation (the best one) gets the training stream's state
        checkpoint[KEY] = self._training_state or capture()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # weights loaded to start from (load_from), not a run to continue
        if KEY in checkpoint:
            restore(checkpoint[KEY])
        else:
            runner.logger.warning(f'the checkpoint holds no {KEY!r} (saved without '
                                  'RandomStateHook): the resumed run draws new random numbers')
