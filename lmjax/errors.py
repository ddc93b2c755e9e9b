"""The one exception type for bad input: the CLI prints it as a single line, no traceback."""


class UserError(ValueError):
  """Something the user asked for or pointed at is wrong; the message says what to do."""
