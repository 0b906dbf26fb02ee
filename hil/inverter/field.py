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

``FieldBehaviour`` names them all for the command lines of ``python -m hil.plant`` and ``python -m
hil.inverter`` (``add_field_arguments``), so the daemon can be run against each (hil/
test_field_devices.py): busy (random exception 6), forgetting or refusing its revert timer, and
a 124 device whose rates are limits running its own way when they are off (``free_power_w``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.config import load_register_map
from hil.inverter.profiles import (
    SUNSPEC_BASE,
    Profile,
    RegisterMapProfile,
    RevertMemory,
    SunSpec100Profile,
    SunSpec700Profile,
)
from hil.inverter.simulator import InverterSimulator, relocate
from hil.inverter.stage import PowerStage
from hil.inverter.sunspec_image import SunSpecImage

VENDOR_MODEL = 64120
VENDOR_LENGTH = 20
MPPT_INPUTS = 2
MPPT_MODULE_LENGTH = 20  # model 160's repeating group, one per DC input
MAC = "02:00:5E:10:00:01"
IP_ADDRESS = "192.168.1.50"
CONFIG_INVERTERS = Path(__file__).resolve().parents[2] / "config" / "inverters"


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


# -- a field device from the command line (python -m hil.plant, python -m hil.inverter) ------

BASES = (0, SUNSPEC_BASE, 50000)


@dataclass(frozen=True, slots=True)
class FieldBehaviour:
    """How a simulated device behaves like one from the field; the default is a tidy device."""

    chain: bool = False  # the field chain (FieldChain100Profile): sunspec-100 only
    base: int = SUNSPEC_BASE
    silent_at_40000: bool = False
    reply_delay_s: float = 0.0
    busy_probability: float = 0.0
    max_connections: int | None = None
    extra_connection: Literal["refuse", "replace"] = "refuse"
    forget_revert_after_s: float | None = None
    forget_controls: bool = False
    refuse_revert_timer: bool = False
    free_power_w: float = 0.0  # 124: the power the device runs at when its limits are off

    def problems(self, profile: str) -> list[str]:
        """Why this behaviour cannot be played with ``profile`` (empty: it can)."""
        problems = []
        sunspec = profile in ("sunspec-100", "sunspec-700")
        if self.chain and profile != "sunspec-100":
            problems.append("--field-chain is a SunSpec 100-series device: --profile sunspec-100")
        if self.free_power_w and profile != "sunspec-100":
            problems.append("--free-power-w is model 124's behaviour: --profile sunspec-100")
        if self.base not in BASES:
            problems.append(f"--base is one of {', '.join(map(str, BASES))}")
        elif self.base != SUNSPEC_BASE and not sunspec:
            problems.append("--base moves a SunSpec chain: --profile sunspec-100 or sunspec-700")
        if self.silent_at_40000 and self.base == SUNSPEC_BASE:
            problems.append("--silent-at-40000 needs the chain elsewhere: --base 0 or 50000")
        if not 0.0 <= self.busy_probability <= 1.0:
            problems.append("--busy-probability is between 0 and 1")
        if not 0.0 <= self.reply_delay_s <= MAX_REPLY_DELAY_S:
            problems.append(f"--reply-delay-s is between 0 and {MAX_REPLY_DELAY_S:g}")
        if self.max_connections is not None and self.max_connections < 1:
            problems.append("--max-connections is at least 1")
        if self.forget_revert_after_s is not None and self.forget_revert_after_s <= 0:
            problems.append("--forget-revert-after-s is a positive time")
        return problems


MAX_REPLY_DELAY_S = 30.0


def build_profile(name: str, stage: PowerStage, behaviour: FieldBehaviour) -> Profile:
    """The profile called ``name`` (sunspec-700, sunspec-100, a map in config/inverters/ or a map
    file), with the behaviour's chain, base and revert memory."""
    profile: Profile
    if name == "sunspec-700":
        profile = SunSpec700Profile(stage)
    elif name == "sunspec-100" and behaviour.chain:
        profile = FieldChain100Profile(stage)
    elif name == "sunspec-100":
        profile = SunSpec100Profile(stage)
    else:
        path = Path(name)
        if not path.exists():
            path = CONFIG_INVERTERS / f"{name}.yaml"
        profile = RegisterMapProfile(load_register_map(path), stage)
    if isinstance(profile, SunSpec100Profile):
        profile.free_power_w = behaviour.free_power_w
    if behaviour.base != SUNSPEC_BASE:
        relocate(profile, behaviour.base)
    if isinstance(profile, RevertMemory):
        profile.forget_revert_after_s = behaviour.forget_revert_after_s
        profile.forget_controls = behaviour.forget_controls
        profile.refuse_revert_timer = behaviour.refuse_revert_timer
    return profile


def build_simulator(
    name: str, stage: PowerStage, behaviour: FieldBehaviour, *, unit_id: int = 1
) -> InverterSimulator:
    """A simulator (not yet started) for profile ``name`` behaving as ``behaviour`` says."""
    sim = InverterSimulator(build_profile(name, stage, behaviour), stage, unit_id=unit_id)
    if behaviour.silent_at_40000:
        sim.silent_at = [range(SUNSPEC_BASE, SUNSPEC_BASE + 2)]
    sim.reply_delay_s = behaviour.reply_delay_s
    sim.busy_probability = behaviour.busy_probability
    sim.max_connections = behaviour.max_connections
    sim.extra_connection = behaviour.extra_connection
    return sim


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line switches of ``FieldBehaviour``."""
    group = parser.add_argument_group("field behaviour (a device as real ones are)")
    group.add_argument(
        "--field-chain",
        action="store_true",
        help="models 1, 11, 12, 103, 120-124, 160 (two inputs) and a vendor model (sunspec-100)",
    )
    group.add_argument("--base", type=int, default=SUNSPEC_BASE, help="SunSpec base: 0|40000|50000")
    group.add_argument(
        "--silent-at-40000", action="store_true", help="no reply at all at 40000 (with --base)"
    )
    group.add_argument("--reply-delay-s", type=float, default=0.0, help="slow: 0.6 as Fronius")
    group.add_argument(
        "--busy-probability", type=float, default=0.0, help="answer exception 6 this often (0..1)"
    )
    group.add_argument("--max-connections", type=int, default=None, help="e.g. 1: one TCP client")
    group.add_argument("--extra-connection", choices=("refuse", "replace"), default="refuse")
    group.add_argument(
        "--forget-revert-after-s",
        type=float,
        default=None,
        help="the device sets its revert timer to 0 this long after each arming",
    )
    group.add_argument(
        "--forget-controls", action="store_true", help="it forgets its control mode with the timer"
    )
    group.add_argument(
        "--refuse-revert-timer", action="store_true", help="it will not keep a revert timer at all"
    )
    group.add_argument(
        "--free-power-w",
        type=float,
        default=0.0,
        help="124 rates as limits: the power (+ charges) the device runs at with its limits off",
    )


def behaviour_from_args(args: argparse.Namespace) -> FieldBehaviour:
    """The ``FieldBehaviour`` the parsed switches of ``add_field_arguments`` describe."""
    return FieldBehaviour(
        chain=args.field_chain,
        base=args.base,
        silent_at_40000=args.silent_at_40000,
        reply_delay_s=args.reply_delay_s,
        busy_probability=args.busy_probability,
        max_connections=args.max_connections,
        extra_connection=args.extra_connection,
        forget_revert_after_s=args.forget_revert_after_s,
        forget_controls=args.forget_controls,
        refuse_revert_timer=args.refuse_revert_timer,
        free_power_w=args.free_power_w,
    )
