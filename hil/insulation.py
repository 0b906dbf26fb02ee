"""A simulated insulation monitoring device (IMD) on the charger's DC output, with its OK relay.

An IMD (IEC 61557-8) measures the insulation resistance between the DC conductors and earth on an
unearthed (IT) DC circuit and holds a relay energised while it is above its alarm threshold: the
charger board reads that contact as ``insulation_ok``. The model:

* ``resistance_ohm``: the insulation resistance the IMD measures (a test or a technician sets it;
  a healthy output is megohms);
* ``alarm_ohm``: the threshold. IEC 61851-23 and GB/T 18487.1 put the fault limit at 100 ohm per
  volt of the highest output voltage (warning at 500 ohm/V): 50 kohm for a 500 V charger;
* ``response_s``: how long the measured condition must hold before the relay follows it (a real
  IMD averages over its measuring pulses). At power-on the relay is released (fail-safe) until a
  first healthy measurement has held that long.

Time is the caller's monotonic clock; the model is pure.
"""

from __future__ import annotations

OHM_PER_V_FAULT = 100.0  # IEC 61851-23 / GB/T 18487.1: at or below 100 ohm/V is a fault
HEALTHY_OHM = 5_000_000.0  # a dry, undamaged output and cable: megohms


class InsulationMonitor:
    """An IMD's measured resistance and its fail-safe OK relay, with a response delay."""

    def __init__(
        self,
        *,
        max_voltage_v: float = 500.0,
        resistance_ohm: float = HEALTHY_OHM,
        response_s: float = 0.5,
    ) -> None:
        if max_voltage_v <= 0 or response_s < 0 or resistance_ohm < 0:
            raise ValueError(
                "expected a positive max_voltage_v and non-negative resistance_ohm and "
                f"response_s, found {max_voltage_v}, {resistance_ohm}, {response_s}"
            )
        self.alarm_ohm = OHM_PER_V_FAULT * max_voltage_v
        self.response_s = response_s
        self._resistance_ohm = resistance_ohm
        self._relay_ok = False  # released at power-on
        # Since when the measurement has said the opposite of the relay (None: it agrees).
        self._differs_since_s: float | None = None

    def __repr__(self) -> str:
        return (
            f"InsulationMonitor({self._resistance_ohm:.0f} ohm, alarm at {self.alarm_ohm:.0f} "
            f"ohm, relay {'OK' if self._relay_ok else 'released'})"
        )

    @property
    def resistance_ohm(self) -> float:
        """The insulation resistance the IMD measures."""
        return self._resistance_ohm

    @resistance_ohm.setter
    def resistance_ohm(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"expected a non-negative resistance, found {value}")
        self._resistance_ohm = value

    @property
    def healthy(self) -> bool:
        """The measured resistance is above the alarm threshold."""
        return self._resistance_ohm > self.alarm_ohm

    def ok(self, now_s: float) -> bool:
        """The OK relay at ``now_s``: it follows the measurement once that has held
        ``response_s``."""
        if self.healthy == self._relay_ok:
            self._differs_since_s = None
        elif self._differs_since_s is None:
            self._differs_since_s = now_s
        if self._differs_since_s is not None and now_s - self._differs_since_s >= self.response_s:
            self._relay_ok = self.healthy
            self._differs_since_s = None
        return self._relay_ok
