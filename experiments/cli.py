"""What the entry points share: a user's mistake ends in one clear line, not a traceback."""

import sys

from absl import app, logging

# What the library raises for a bad config, missing or damaged files, an unwritable
# workdir and a diverged run; each message says what to do. Anything else is a bug,
# and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)


def run(main) -> None:
  """app.run(main), with USER_ERRORS printed as one line on stderr (exit status 1); the
  traceback goes to the debug log (--verbosity=1)."""

  def reporting_main(argv):
    try:
      return main(argv)
    except USER_ERRORS as error:
      logging.debug("Traceback of the error below:", exc_info=True)
      message = error.args[0] if isinstance(error, KeyError) and error.args else error
      sys.stderr.write(f"Error: {message}\n(--verbosity=1 shows the traceback.)\n")
      sys.exit(1)

  app.run(reporting_main, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's parser, with ml_collections' errors for a --config.FIELD flag (raised while
  parsing, as AttributeError or KeyError) turned into one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    sys.stderr.write(
      f"Error: a --config.FIELD flag names no field of the config, or gives it a value of the "
      f"wrong type ({str(error).strip()}). The fields and their types are in vae_jax/config.py.\n"
    )
    sys.exit(1)


def config_value(flag):
  """A config flag's value; a missing file or an unknown field becomes a UsageError."""
  try:
    return flag.value
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as error:
    raise app.UsageError(f"Bad --config: {str(error).strip()}") from error
