"""One root for the daemon's own errors; builtin bases kept, so no except clause changed."""

from __future__ import annotations

import pytest

from daemon.cli.common import UserError
from daemon.config import ConfigError
from daemon.decide.templates import TemplateError
from daemon.errors import TextbackError
from daemon.intake.client import AmiConnectionLost, AmiError, AmiLoginError, AmiTimeout
from daemon.outbox.outbox import CapReached
from daemon.store.store import StoreError, StoreLockedError
from gsm.errors import GsmError


@pytest.mark.parametrize(
    "cls",
    [
        ConfigError,
        AmiError,
        AmiLoginError,
        AmiConnectionLost,
        AmiTimeout,
        TemplateError,
        StoreError,
        StoreLockedError,
        CapReached,
    ],
)
def test_the_daemons_errors_share_one_root(cls: type[Exception]) -> None:
    assert issubclass(cls, TextbackError)


def test_user_error_is_ours() -> None:
    with pytest.raises(TextbackError):
        raise UserError("--limit must be at least 1")


def test_builtin_bases_are_kept() -> None:
    assert issubclass(AmiTimeout, TimeoutError)  # `except TimeoutError` still catches it
    assert issubclass(TemplateError, ValueError)  # the policy's fallback catches ValueError


def test_the_modem_driver_keeps_its_own_tree() -> None:
    assert not issubclass(GsmError, TextbackError)  # gsm imports nothing from daemon
