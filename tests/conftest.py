"""Test-wide JAX settings: implicit rank promotion is a bug, so make it an error."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
