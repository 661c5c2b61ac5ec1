"""The one exception type for a user's mistake that the CLI turns into a one-line message."""


class UserError(ValueError):
    """Bad input: the message names the input at fault and the fix. The CLI exits 2."""
