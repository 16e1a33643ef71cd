"""The error nnunet-ext raises for bad input that the user must fix (labels, plans, environment, arguments)."""
from __future__ import annotations


class UserInputError(SystemExit):
    """Stops the command with one line naming the problem and the fix, without a traceback.

    A SystemExit, so that ``nnUNetv2_train`` (which does not catch exceptions) prints only the message and exits
    with status 1; in Python, catch it as ``except UserInputError``.
    """

    def __init__(self, message: str):
        super().__init__(f"nnunet-ext: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message
