"""The charger board's digital lines, in memory, shared by the charger link and the vehicle."""

from __future__ import annotations

from controller.vehicle.frames import LineInputs, LineOutputs


class SimulatedLines:
    """A ``ChargerLines`` whose inputs the simulated vehicle drives.

    The charger writes d1, d2, contactors and lock; the vehicle reads them and sets k; a test
    (or the technician) plugs and unplugs the connector.
    """

    def __init__(self, *, plugged: bool = True) -> None:
        self.plugged = plugged
        self.k = False
        self.outputs = LineOutputs()

    def __repr__(self) -> str:
        return f"SimulatedLines(plugged={self.plugged}, k={self.k}, {self.outputs})"

    def read(self) -> LineInputs:
        """The charger's view of its inputs."""
        return LineInputs(plugged=self.plugged, k=self.k)

    def write(self, outputs: LineOutputs) -> None:
        """The charger drives its outputs."""
        self.outputs = outputs
