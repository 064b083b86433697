"""Errors that are the user's to fix (a bad flag, a config that does not fit a run directory):
`zppo` prints them as one line, without a traceback. Importing this module is free."""


class UserError(ValueError):
  """A problem with the command's input, stated in one line that says what to change."""
