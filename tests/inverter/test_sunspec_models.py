"""SunSpec model definitions come from the SunSpec Alliance's JSON, with the offsets we rely on."""

from __future__ import annotations

import pytest

from controller.inverter.codec import RegType
from controller.inverter.sunspec_models import UnknownModelError, model_def


@pytest.mark.parametrize(
    ("model_id", "length"),
    [
        (1, 66),
        (701, 153),
        (702, 50),
        (704, 65),
        (713, 7),
        (103, 50),
        (120, 26),
        (121, 30),
        (123, 24),
        (124, 24),
    ],
)
def test_model_lengths(model_id: int, length: int) -> None:
    """Each model's fixed part spans exactly its L registers."""
    definition = model_def(model_id)
    assert definition.length == length
    end = max(p.offset + p.size for p in definition.points.values())
    assert end - 2 == length


def test_control_points_where_the_facts_say() -> None:
    """704 WSet at offset 24 (int32, WSet_SF), WSetRvrtTms at 31; 701 W at 10 (W_SF)."""
    ctl = model_def(704)
    assert (ctl.point("WSet").offset, ctl.point("WSet").reg_type) == (24, RegType.I32)
    assert ctl.point("WSet").sf == "WSet_SF"
    assert ctl.point("WSetRvrtTms").offset == 31
    assert ctl.point("WSetEna").writable
    meas = model_def(701)
    assert (meas.point("W").offset, meas.point("W").sf) == (10, "W_SF")
    assert meas.point("InvSt").symbols[6] == "FAULT"
    assert model_def(103).point("St").symbols[7] == "FAULT"


def test_unknown_model() -> None:
    """A model id with no definition is a clear error."""
    with pytest.raises(UnknownModelError):
        model_def(64999)
