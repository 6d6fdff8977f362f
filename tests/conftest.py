"""Shared test hygiene."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fresh_smolpack_loggers() -> Iterator[None]:
    # The CLI gives the `smolpack` loggers a stderr handler and stops propagation, once per
    # process. In-process CLI tests would leave that behind: a handler on a closed capture
    # stream, and records that no longer reach caplog.
    yield
    for name in ("smolpack", "smolpack.image"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.propagate = True
