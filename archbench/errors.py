"""The one exception type for failures a user can cause and fix (bad name, missing data, ...).

The CLI prints its message as a single line and exits with ``exit_code``; anything else is a bug and
keeps its traceback.
"""

DIVERGED_EXIT = 3  # `archbench run`'s exit code when every run was recorded but at least one diverged


class ArchbenchError(Exception):
    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def not_installed(option: str, package: str, extra: str) -> ArchbenchError:
    """The one line for an option whose optional package is missing, with the command that installs it."""
    return ArchbenchError(f"{option} needs {package}, which is not installed: pip install 'archbench[{extra}]'")
