"""Test-wide JAX settings: float32 matmuls at full precision, rank promotion an error.

At the repository's root, so that they hold for the tests, the docstrings' examples
(`--doctest-modules`) and the docs pages' examples (`--doctest-glob='*.md'`) alike.

The tests check exact math (closed forms, path gradients that vanish, bit-identical
resumes), so float32 matmuls are pinned to float32: on an NVIDIA GPU JAX's default is
TF32 (10-bit mantissa inputs), which moves such results by ~1e-3. The environment
variables reach the subprocesses that the tests start. Implicit rank promotion is a bug.

Many tests build the same small experiment, and compiling its functions again was
most of their time, so a test process and the subprocesses it starts share one
compilation cache (a new, empty one each run, removed at the end): a cached executable
is the one the same program compiles to.
`make test` runs the tests in one process per core (pytest-xdist), each with its own
cache; on a GPU they share the device, so none may preallocate most of its memory.
"""

import atexit
import os
import shutil
import tempfile

os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "float32"
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="vae_jax_tests_compilation_cache_")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # cache small programs too
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")
jax.config.update("jax_numpy_rank_promotion", "raise")

# The docs' Sphinx configuration and its generated and built pages are not tests.
collect_ignore = ["docs/conf.py", "docs/generate.py"]
collect_ignore_glob = ["docs/_build/*", "docs/_generated/*"]
