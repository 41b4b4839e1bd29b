"""The project's user-facing errors: a bad setting, missing data or unavailable weights, told in one line."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a setting, a file, a download), with a one-line message saying what and how.

    The console commands print the message alone, without a traceback, and exit with status 2.
    """


class SettingsError(UserError, ValueError):
    """A setting (a name, a value, a combination with a checkpoint) that cannot work."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset file or folder the settings point to does not exist."""


class WeightsUnavailableError(UserError, OSError):
    """A backbone's pretrained weights are not on this machine and cannot be downloaded."""


def user_error_in(err: BaseException):
    """The project's `UserError` behind `err`, if any: LightningCLI (jsonargparse) wraps the errors the model's or
    data's `__init__` raises in its own."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
