"""One base class for the errors a user can act on (`disney_train.errors.UserError`), caught in one place.

The CLI's guard once listed eleven error classes, imported inside `try/except ImportError`; the ones it
forgot (a report's, a sample's, Prometheus', a run owned by another) escaped as tracebacks.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer

import disney_train
from disney_train.cli.common import guard
from disney_train.errors import UserError

# Exceptions of the library that are not the user's to act on, each for its reason
NOT_FOR_USERS = {
    "disney_train.data.frames.ClipTooShortError": "pack turns it into a reject of the clip",
    "disney_train.storage.s3_errors.ShortRead": "retried: a transfer cut short",
    "disney_train.storage.s3_errors.IntegrityError": "retried: bytes that do not match their checksum",
    "disney_train.train.launch.RunFinishedError": "not a failure: the CLI says the run is done, in yellow",
}


def library_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(disney_train.__path__, "disney_train."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_exception_of_the_library_is_a_user_error_or_says_why_not() -> None:
    found = library_exceptions()
    assert set(NOT_FOR_USERS) <= set(found), set(NOT_FOR_USERS) - set(found)
    undecided = [name for name, cls in found.items() if not issubclass(cls, UserError) and name not in NOT_FOR_USERS]
    assert not undecided, f"derive these from UserError or list them in NOT_FOR_USERS: {undecided}"
    assert not [name for name in NOT_FOR_USERS if issubclass(found[name], UserError)]


@pytest.mark.parametrize(
    "error", sorted((n for n, c in library_exceptions().items() if issubclass(c, UserError)), key=str)
)
def test_the_cli_prints_any_user_error_as_one_line(error: str, capsys: pytest.CaptureFixture[str]) -> None:
    cls = library_exceptions()[error]

    said = "s3://bucket/run [team-a]: something the user can fix, " + "said at length " * 8  # wider than 80

    def fails() -> None:
        raise cls(said)

    with pytest.raises(typer.Exit) as exited:
        guard(fails)
    assert exited.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {said}".strip()], err
