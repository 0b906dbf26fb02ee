"""Devices as they come from the field, for the simulator to play (issue 16).

``FieldChain100Profile`` is a storage inverter whose SunSpec chain carries what real ones carry
around their power models: the communication-board models 11 (Ethernet link layer) and 12
(IPv4), inverter 103, nameplate, settings, status, controls and storage 120-124, an MPPT model
160 with two DC inputs (its repeating group), and a vendor model last. The other field
behaviours are simulator settings or a relocation, combined by ``field_device``:

- a slow device: ``InverterSimulator.reply_delay_s = 0.6`` (Fronius-class replies);
- one TCP connection only: ``max_connections = 1`` (``extra_connection``: refuse or replace);
- the SunSpec chain at base 0 or 50000: ``relocate(profile, base)``;
- silent at 40000 but answering at 0: relocated to 0 with ``silent_at = [range(40000, 40002)]``.
"""

from __future__ import annotations

from collections.abc import Callable

from hil.inverter.profiles import SUNSPEC_BASE, Profile, SunSpec100Profile
from hil.inverter.simulator import InverterSimulator, relocate
from hil.inverter.stage import PowerStage
from hil.inverter.sunspec_image import SunSpecImage

VENDOR_MODEL = 64120
VENDOR_LENGTH = 20
MPPT_INPUTS = 2
MPPT_MODULE_LENGTH = 20  # model 160's repeating group, one per DC input
MAC = "02:00:5E:10:00:01"
IP_ADDRESS = "192.168.1.50"


class FieldChain100Profile(SunSpec100Profile):
    """Models 1, 11, 12, 103, 120, 121, 122, 123, 124, 160 (two inputs) and a vendor model."""

    name = "sunspec-100"
    # SunSpec100Profile.models is inferred as a 6-tuple; the longer chain is the point here.
    models = (1, 11, 12, 103, 120, 121, 122, 123, 124, 160, VENDOR_MODEL)  # type: ignore[assignment]

    def __init__(self, stage: PowerStage) -> None:
        super().__init__(stage)
        # The parent built the image with fixed-length models; rebuild it with model 160's
        # repeating groups and the vendor model's length, keeping every value already set.
        built = self.image
        image = SunSpecImage(
            SUNSPEC_BASE,
            self.models,
            extra={160: MPPT_INPUTS * MPPT_MODULE_LENGTH, VENDOR_MODEL: VENDOR_LENGTH},
        )
        for model_id, definition in built.definitions.items():
            source = built.model_address[model_id] - built.base + 2  # past ID and L
            target = image.model_address[model_id] - image.base + 2
            length = definition.length
            image.registers[target : target + length] = built.registers[source : source + length]
        self.image = image
        image.set_raw(11, "MAC", MAC)
        image.set_raw(11, "St", 1)
        image.set_raw(12, "Addr", IP_ADDRESS)
        image.set_raw(122, "PVConn", 0b111)
        image.set_raw(122, "StorConn", 0b111)
        image.set_raw(160, "N", MPPT_INPUTS)
        for sf in ("DCA_SF", "DCV_SF", "DCW_SF", "DCWH_SF"):
            image.set_raw(160, sf, 0)
        vendor = image.model_address[VENDOR_MODEL] - image.base + 2
        image.registers[vendor : vendor + VENDOR_LENGTH] = range(0xA000, 0xA000 + VENDOR_LENGTH)


def field_device(
    profile: Callable[[PowerStage], Profile],
    stage: PowerStage,
    *,
    base: int = SUNSPEC_BASE,
    silent_at_40000: bool = False,
    reply_delay_s: float = 0.0,
    max_connections: int | None = None,
) -> InverterSimulator:
    """A simulator for ``profile`` with the field behaviours asked for (not yet started)."""
    built = profile(stage)
    if base != SUNSPEC_BASE:
        relocate(built, base)
    sim = InverterSimulator(built, stage)
    if silent_at_40000:
        sim.silent_at = [range(SUNSPEC_BASE, SUNSPEC_BASE + 2)]
    sim.reply_delay_s = reply_delay_s
    sim.max_connections = max_connections
    return sim
