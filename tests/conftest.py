import os

# The Triton kernels run on CPU tensors through Triton's interpreter; it must be switched on
# before triton is first imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import mmvmamba  # noqa: E402,F401  (applies mmvmamba.compat before any OpenMMLab import)

import pytest  # noqa: E402


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
