"""Test-wide JAX settings: float32 matmuls at full precision, rank promotion an error.

The tests check exact math (closed forms, path gradients that vanish, bit-identical
resumes), so float32 matmuls are pinned to float32: on an NVIDIA GPU JAX's default is
TF32 (10-bit mantissa inputs), which moves such results by ~1e-3. The environment
variable reaches the subprocesses that the tests start. Implicit rank promotion is a bug.
"""

import os

os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "float32"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")
jax.config.update("jax_numpy_rank_promotion", "raise")
