"""The error every workflow kind raises when it cannot list or commit."""


class WorkflowError(Exception):
    """A workflow could not list its records or write a commit."""
