"""The one exception type for user mistakes.

Anything a user can get wrong (paths, config keys, labels, vocabularies) raises
`UserError` with a message that names the file or key and the fix. The CLI turns
it into one line on stderr and exit status 2, never a traceback.
"""


class UserError(Exception):
  """A mistake in the user's input, config or files; exit status 2."""

  exit_code = 2
