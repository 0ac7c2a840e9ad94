"""Sphinx configuration of the vae_jax documentation: `make docs` builds it into docs/_build/html.

The generated pages (API reference, config fields, the reproduction and benchmark tables,
the notebooks) are written into docs/_generated/ by docs/generate.py at every build, from
the code and the files under results/, so that no number or field is kept twice.
"""

import inspect
import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(DOCS))  # vae_jax from this checkout
sys.path.insert(0, DOCS)

import generate  # noqa: E402
from flax import nnx  # noqa: E402
from sphinx.util import logging  # noqa: E402
from sphinx.util.inspect import stringify_signature  # noqa: E402

project = "vae_jax"
author = "the vae_jax authors"
copyright = "2026, the vae_jax authors"

extensions = [
  "myst_nb",  # Markdown pages (MyST) and the notebooks
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",  # the Google-style Args/Returns of the docstrings
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "_generated/fragments"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are executed by tests/test_notebooks.py

autodoc_default_options = {
  "members": True,
  "undoc-members": True,  # so that a public name without a docstring shows, and fails below
  "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autosummary_generate = False  # docs/generate.py writes the API pages itself
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("References", "notes_style")]
napoleon_use_ivar = True  # a NamedTuple's Attributes: once, as fields of the class
napoleon_attr_annotations = False  # not jax.jaxlib._jax.Array beside every field
default_role = "code"  # `name` in a docstring is code, as it reads in plain text
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = "vae_jax"
html_theme_options = {
  "show_toc_level": 2,
  "home_page_in_toc": True,
  "use_download_button": False,
}
html_static_path = []

_logger = logging.getLogger(__name__)


def _require_docstring(app, what, name, obj, options, lines):
  """Every public name the API reference shows has a docstring: a missing one fails the
  build (warnings are errors in `make docs`). A constant's docstring is its `#:` comment,
  not the docstring of its type (dict, tuple), which autodoc would show instead."""
  if (
    what in ("data", "attribute")
    and lines
    and "\n".join(lines).strip() == (inspect.getdoc(type(obj)) or "")
  ):
    lines.clear()
  if not any(line.strip() for line in lines) and not name.split(".")[-1].startswith("_"):
    _logger.warning("%s %s is public and has no docstring", what, name)


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """A NamedTuple's fields are described in its docstring's Attributes, not again as
  members with the "Alias for field number N" docstrings Python gives them."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
  """An NNX module's signature is its __init__'s (the metaclass's is `*args, **kwargs`)."""
  if what != "class" or not (inspect.isclass(obj) and issubclass(obj, nnx.Module)):
    return None
  init = inspect.signature(obj.__init__)
  init = init.replace(parameters=list(init.parameters.values())[1:])  # without self
  text = stringify_signature(init, show_return_annotation=False, unqualified_typehints=True)
  return re.sub(r"~(?:\w+\.)*(\w+)", r"\1", text), None  # ~typing.Sequence: Sequence


def _generate(app):
  generate.write_all(os.path.join(DOCS, "_generated"))


def setup(app):
  app.connect("builder-inited", _generate)
  app.connect("autodoc-process-docstring", _require_docstring)
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
  app.connect("autodoc-process-signature", _constructor_signature)
