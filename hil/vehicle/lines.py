"""The charger board's digital lines as the simulated vehicle sees them.

``SimulatedLines`` keeps them in memory, shared by a charger link and a simulated vehicle in one
process. ``controller.vehicle.lines.SharedFileLines`` keeps them in a small shared file, so the
daemon and ``python -m hil.vehicle --lines PATH`` in another process see the same lines.
"""

from __future__ import annotations

from typing import Protocol

from controller.vehicle.frames import LineInputs, LineOutputs


class VehicleSideLines(Protocol):
    """What the simulated vehicle needs: the charger's outputs, and k (and plugged) to drive."""

    @property
    def outputs(self) -> LineOutputs: ...

    @property
    def k(self) -> bool: ...

    @k.setter
    def k(self, value: bool) -> None: ...

    @property
    def plugged(self) -> bool: ...

    @plugged.setter
    def plugged(self, value: bool) -> None: ...


class SimulatedLines:
    """A ``ChargerLines`` whose inputs the simulated vehicle drives.

    The charger writes d1, d2, contactors and lock; the vehicle reads them and sets k; a test
    (or the technician) plugs and unplugs the connector and presses the fault reset button
    (``fault_reset``: True while held down). ``insulation_ok`` is the site's insulation
    monitor's OK relay: a healthy installation unless a test says otherwise.
    """

    def __init__(self, *, plugged: bool = True, insulation_ok: bool = True) -> None:
        self.plugged = plugged
        self.k = False
        self.fault_reset = False
        self.insulation_ok = insulation_ok
        self.outputs = LineOutputs()

    def __repr__(self) -> str:
        return f"SimulatedLines(plugged={self.plugged}, k={self.k}, {self.outputs})"

    def open(self) -> None:
        """Nothing to acquire in memory."""

    def read(self) -> LineInputs:
        """The charger's view of its inputs."""
        return LineInputs(
            plugged=self.plugged,
            k=self.k,
            fault_reset=self.fault_reset,
            insulation_ok=self.insulation_ok,
        )

    def write(self, outputs: LineOutputs) -> None:
        """The charger drives its outputs."""
        self.outputs = outputs

    def close(self) -> None:
        """The charger lets go: every output off."""
        self.outputs = LineOutputs()
