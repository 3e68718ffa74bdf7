import os

# The Triton kernels run on CPU tensors through Triton's interpreter; it must be switched on
# before triton is first imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import mmvmamba  # noqa: E402,F401  (applies mmvmamba.compat before any OpenMMLab import)

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: on a machine without it they are reported as skipped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (run with `make test-gpu` on one)')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_visualizers():
    """mmengine keeps each visualizer class's instances for the whole process, and a runner of
    one task would pick up the last task's visualizer (mmdet's hook handed mmseg's visualizer
    arguments it does not take): forget them after each test."""
    yield
    from mmengine.visualization import Visualizer
    classes = [Visualizer]
    while classes:
        cls = classes.pop()
        cls._instance_dict.clear()
        classes.extend(cls.__subclasses__())
