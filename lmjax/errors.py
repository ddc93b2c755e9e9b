"""The exceptions the CLI turns into one line, no traceback."""


class UserError(ValueError):
  """Something the user asked for or pointed at is wrong; the message says what to do."""


class Stopped(Exception):
  """A run stopped early on a signal, after saving; the message says how to resume."""
