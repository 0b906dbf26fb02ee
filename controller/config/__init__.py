"""The technician's YAML files, loaded with line numbers and validated into frozen pydantic models.

Nothing else in the controller reads YAML (tests/test_layers.py checks it). The package:

* ``loader`` reads YAML keeping the line of every key and turns every problem into a located
  ``ConfigProblem`` of one ``ConfigError``;
* ``schema`` is the controller's config (``Config`` and its sections, ``load_config``);
* ``bms_profile`` is a generic BMS profile (``vehicle.protocol: dbc``);
* ``register_map`` is a non-SunSpec inverter's register map.

The names below are the package's public face: import them from ``controller.config``.
"""

from controller.config.bms_profile import (
    BmsFlags,
    BmsMessage,
    BmsProfile,
    BmsSignal,
    BmsValues,
    SignalRef,
    bms_profile_error,
    load_bms_profile,
)
from controller.config.loader import Loc
from controller.config.register_map import (
    EnableRole,
    FaultRole,
    HeartbeatRole,
    MapRegister,
    MapRoles,
    RegisterMap,
    SignedRole,
    StatusRole,
    load_register_map,
)
from controller.config.schema import (
    DEFAULT_BITRATE_BPS,
    REQUIRED_LINES,
    AggregatorConfig,
    CanConfig,
    ChargerRatingsConfig,
    Config,
    ControlConfig,
    DepartureConfig,
    FallbackConfig,
    GpioOffsets,
    InverterConfig,
    LedgerConfig,
    LineName,
    LinesConfig,
    LoggingConfig,
    ModbusRtuConfig,
    ModbusTcpConfig,
    MqttBrokerConfig,
    MqttTlsConfig,
    OwnerConfig,
    SafetyConfig,
    SiteConfig,
    TariffConfig,
    TimeWindow,
    VehicleConfig,
    json_schema,
    load_config,
    parse_config,
)

__all__ = [
    "DEFAULT_BITRATE_BPS",
    "REQUIRED_LINES",
    "AggregatorConfig",
    "BmsFlags",
    "BmsMessage",
    "BmsProfile",
    "BmsSignal",
    "BmsValues",
    "CanConfig",
    "ChargerRatingsConfig",
    "Config",
    "ControlConfig",
    "DepartureConfig",
    "EnableRole",
    "FallbackConfig",
    "FaultRole",
    "GpioOffsets",
    "HeartbeatRole",
    "InverterConfig",
    "LedgerConfig",
    "LineName",
    "LinesConfig",
    "Loc",
    "LoggingConfig",
    "MapRegister",
    "MapRoles",
    "ModbusRtuConfig",
    "ModbusTcpConfig",
    "MqttBrokerConfig",
    "MqttTlsConfig",
    "OwnerConfig",
    "RegisterMap",
    "SafetyConfig",
    "SignalRef",
    "SignedRole",
    "SiteConfig",
    "StatusRole",
    "TariffConfig",
    "TimeWindow",
    "VehicleConfig",
    "bms_profile_error",
    "json_schema",
    "load_bms_profile",
    "load_config",
    "load_register_map",
    "parse_config",
]
