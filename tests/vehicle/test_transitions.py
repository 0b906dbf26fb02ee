"""The CHAdeMO and GB/T sessions change state only as their transition tables allow."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import pytest

from controller.vehicle import chademo, gbt27930
from controller.vehicle.chademo import ChademoSession, ChademoState
from controller.vehicle.gbt27930 import GbtSession, GbtState
from controller.vehicle.session import IllegalTransitionError

TABLES: list[tuple[type[enum.Enum], Mapping[enum.Enum, frozenset[enum.Enum]]]] = [
    (ChademoState, chademo.TRANSITIONS),  # type: ignore[list-item]  # invariant Mapping key
    (GbtState, gbt27930.TRANSITIONS),  # type: ignore[list-item]  # invariant Mapping key
]


@pytest.mark.parametrize(("states", "table"), TABLES, ids=["chademo", "gbt27930"])
def test_the_table_covers_every_state(
    states: type[enum.Enum], table: Mapping[enum.Enum, frozenset[enum.Enum]]
) -> None:
    """Every state has a row, every move leads to a state, and every state is reachable from
    IDLE and leads back to it (a session never gets stuck)."""
    assert set(table) == set(states)
    assert all(isinstance(target, states) for targets in table.values() for target in targets)
    idle = states["IDLE"]

    def reachable(start: enum.Enum) -> set[enum.Enum]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in table[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert reachable(idle) == set(states)
    assert all(idle in reachable(state) for state in states)


def test_an_illegal_chademo_transition_raises() -> None:
    """IDLE straight to ENERGY_TRANSFER is a bug in the session: IllegalTransitionError."""
    session = ChademoSession()
    with pytest.raises(IllegalTransitionError, match="chademo: idle -> energy_transfer"):
        session._enter(ChademoState.ENERGY_TRANSFER, 0.0, "skipping the sequence")
    assert session.state is ChademoState.IDLE


def test_an_illegal_gbt_transition_raises() -> None:
    """IDLE straight to CHARGING is a bug in the session: IllegalTransitionError."""
    session = GbtSession()
    with pytest.raises(IllegalTransitionError, match="gbt27930: idle -> charging"):
        session._enter(GbtState.CHARGING, 0.0, "skipping the handshake")
    assert session.state is GbtState.IDLE


def test_an_illegal_transition_is_no_protocol_error() -> None:
    """A programming error, outside the ControllerError tree that handlers catch."""
    from controller.errors import ControllerError  # noqa: PLC0415

    assert issubclass(IllegalTransitionError, RuntimeError)
    assert not issubclass(IllegalTransitionError, ControllerError)
