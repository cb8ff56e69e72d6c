"""The base class of every error a user can fix: a bad config value, input file, checkpoint or output path.

main.py prints such errors as one `error: <message>` line (exit status 2); anything else is a bug and keeps
its traceback. Each subclass (ConfigError, DataError, CheckpointError, EvaluationError, ...) names the value
or file and says what to do.
"""


class UserError(ValueError):
  """An error in what the user asked for; the message names the flag, value or file and the fix."""


class ConfigError(UserError):
  """An invalid config: unknown keys or bad values (every problem listed)."""


class EvaluationError(UserError):
  """Bad evaluation input: missing or unreadable masks, size mismatches, empty folders, missing sequences."""
