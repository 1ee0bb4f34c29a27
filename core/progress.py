"""The small protocol through which core reports progress; cli renders it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives what a long step is doing and how far it got."""

    def stage(self, name: str) -> None:
        """A new step starts (`pulling`, `saving`, `converting`, …)."""

    def update(self, done: float, total: float) -> None:
        """The current step has done `done` of `total` units."""

    def warn(self, message: str) -> None:
        """Something the operator must hear even where steps are not shown (a registry that did not answer)."""


class NoProgress:
    """Progress that goes nowhere: for quiet runs and for tests."""

    def stage(self, name: str) -> None:
        pass

    def update(self, done: float, total: float) -> None:
        pass

    def warn(self, message: str) -> None:
        pass
