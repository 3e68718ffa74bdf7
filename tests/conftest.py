import os

# The Triton kernels run on CPU tensors through Triton's interpreter; it must be switched on
# before triton is first imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import mmvmamba  # noqa: E402,F401  (applies mmvmamba.compat before any OpenMMLab import)

import random  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        '--random-seed', type=int, default=None,
        help='base seed of the random inputs (default: fixed, so runs repeat; a failing test '
        'prints the seed it ran with)')


@pytest.fixture(autouse=True)
def seeded_random_inputs(request):
    """Seed python's, numpy's and torch's generators from the test's id (plus --random-seed), so
    a test draws the same inputs on every run and float32-vs-float64 tolerances do not turn
    into coin flips; other values of --random-seed explore other inputs."""
    base = request.config.getoption('--random-seed') or 0
    seed = (zlib.crc32(request.node.nodeid.encode()) + base) % (1 << 31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield
    if getattr(request.node, 'rep_call', None) is not None and request.node.rep_call.failed:
        print(f'\n{request.node.nodeid} ran with seed {seed} (--random-seed {base})')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == 'call':
        item.rep_call = report


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
