"""Shared pytest setup.

Without a GPU, TRITON_INTERPRET=1 is set before triton is imported anywhere, so that the kernel tests run the
real Triton kernels on CPU tensors (inside `kernels.triton_on_cpu()`). It changes nothing else: without that
context manager CPU tensors take the plain PyTorch reference path. With a GPU the kernels are compiled and the
GPU tests run instead.

The long subprocess runs start in the background. A test file that defines `in_background(tmp_path)` (the quick
start and the study, most of a minute each; the GPU check's smoke run; transformers from the repository root) has
it called in a thread as soon as collection has selected one of its tests that take the `background` fixture, so
the run goes on beside the other tests, on the second core; that fixture waits for it and returns what it
returned (or raises what it raised).
The tests and their assertions are the same as if the fixture had done the work; only the order changes. A
session that stops early still waits for a run in flight to finish. A run in the background goes on while other
tests monkeypatch os.environ: it passes its commands an environment copied at import (env=ENV), never the live one.
"""

import concurrent.futures
import os

# Before torch loads OpenMP: waiting threads sleep rather than spin, so a test (or the subprocess it starts)
# does not stall when another process holds a core (see minirlhf/stages.py). It changes no number.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small, deterministic, and not competing with itself for the 2 cores of a CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# two at a time beside the tests on 2 cores, in the order of the files (the earliest needed first)
_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="in_background")
_STARTED = {}  # test module name -> Future of its in_background(tmp_path)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    modules = dict.fromkeys(item.module for item in session.items
                            if isinstance(item, pytest.Function) and "background" in item.fixturenames)
    for module in modules:
        if hasattr(module, "in_background"):
            tmp = session.config._tmp_path_factory.mktemp(module.__name__)  # what tmp_path_factory.mktemp does
            _STARTED[module.__name__] = _BACKGROUND.submit(module.in_background, tmp)


@pytest.fixture(scope="module")
def background(request):
    """What this test file's in_background(tmp_path) returned, once it has finished."""
    return _STARTED[request.module.__name__].result()
