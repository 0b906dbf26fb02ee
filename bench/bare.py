"""The bare reacting end of the latency floors (bench/latency.py): library code, no project code.

bench/latency.py runs this file as its own process (``python -P bench/bare.py ...``; it imports
no project module) in place of the daemon, and measures from its own send or publish
to the write landing at the inverter simulator, as it does for the daemon:

``can``
    A blocking python-can ``recv`` loop on the daemon's CAN channel, filtered to one frame id;
    each frame decoded with cantools from the project's DBC file; when ``--signal`` is 0 (the
    GB/T BSM's "charging allowed" = 00) one synchronous pymodbus write of 0 W, [0, 0] to 124
    OutWRte and InWRte (function 16).
``mqtt``
    A paho-mqtt client (MQTT 5, QoS 1, TCP_NODELAY as the daemon sets) in paho's own loop,
    subscribed to the setpoint topic; each message's JSON ``power_w`` turned into the 124 rate
    pair that pins the window on it (InWRte % of WChaMax, OutWRte % of WDisChaMax, the other
    edge negated, as the daemon's driver writes them) and written the same way.

It prints ``ready`` once it listens and ``done <tag>`` after each write (the frame's data in hex,
or the setpoint's id), so the bench knows when to read the simulator's write log. The setup the
daemon does once (discovery, StorCtl_Mod, Conn) is not part of the path: the bench does it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from typing import Any

import can
import cantools
import paho.mqtt.client as mqtt
from cantools.database.can import Database as CanDatabase
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient

# linux/in.h IP_MULTICAST_ALL and linux/in6.h IPV6_MULTICAST_ALL (not exported by Python): off,
# so the socket hears only its own group, as the daemon's does (python-can binds every
# udp_multicast bus to one port, and other HIL runs on the host may use other groups).
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
EXTENDED_ID_MASK = 0x1FFFFFFF


def _modbus(port: int) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    if not client.connect():  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
        raise SystemExit(f"bare: cannot connect to the inverter simulator on port {port}")
    return client


def _write(client: ModbusTcpClient, address: int, registers: list[int], unit: int) -> None:
    response = client.write_registers(address, registers, device_id=unit)
    if response.isError():
        raise SystemExit(f"bare: write refused: {response}")


def react_to_frames(args: argparse.Namespace) -> None:
    database = cantools.database.load_file(args.dbc)
    if not isinstance(database, CanDatabase):
        raise SystemExit(f"bare: {args.dbc} is not a CAN database")
    message_type = database.get_message_by_frame_id(args.frame_id)
    extended = message_type.is_extended_frame
    bus = can.Bus(
        interface=args.interface,
        channel=args.channel,
        can_filters=[{"can_id": args.frame_id, "can_mask": EXTENDED_ID_MASK, "extended": extended}],
    )
    modbus = _modbus(args.modbus_port)
    try:
        if args.interface == "udp_multicast":
            with (
                socket.socket(fileno=os.dup(bus.fileno())) as sock,
                contextlib.suppress(OSError),
            ):
                if sock.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        print("ready", flush=True)
        while True:
            frame = bus.recv()
            if frame is None or frame.arbitration_id != args.frame_id:
                continue
            signals = message_type.decode(bytes(frame.data), decode_choices=False)
            if signals[args.signal] == 0:
                _write(modbus, args.address, [0, 0], args.unit)
                print("done", bytes(frame.data).hex(), flush=True)
    finally:
        modbus.close()  # type: ignore[no-untyped-call]
        bus.shutdown()


def react_to_setpoints(args: argparse.Namespace) -> None:
    modbus = _modbus(args.modbus_port)
    percent_per_raw = 10.0**args.rate_sf

    def on_socket_open(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(args.topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        print("ready", flush=True)

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        setpoint = json.loads(message.payload)
        power_w = float(setpoint["power_w"])
        in_raw = round(abs(power_w) / args.rate_base_w * 100.0 / percent_per_raw)
        out_raw = round(abs(power_w) / args.discharge_base_w * 100.0 / percent_per_raw)
        # 124's rates are limits: both edges of the window pinned on the power.
        if power_w > 0:
            out_raw = -out_raw
        elif power_w < 0:
            in_raw = -in_raw
        _write(modbus, args.address, [out_raw & 0xFFFF, in_raw & 0xFFFF], args.unit)  # int16
        print("done", setpoint["id"], flush=True)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare-subscriber", protocol=mqtt.MQTTv5
    )
    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect("127.0.0.1", args.broker_port, keepalive=5, clean_start=True)
        client.loop_forever()
    finally:
        client.disconnect()
        modbus.close()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/bare.py", description=__doc__)
    parser.add_argument("--modbus-port", type=int, required=True)
    parser.add_argument("--address", type=int, required=True, help="124 OutWRte (InWRte next)")
    parser.add_argument("--unit", type=int, default=1)
    kinds = parser.add_subparsers(dest="kind", required=True)
    frames = kinds.add_parser("can")
    frames.add_argument("--interface", required=True)
    frames.add_argument("--channel", required=True)
    frames.add_argument("--dbc", required=True)
    frames.add_argument("--frame-id", type=int, required=True)
    frames.add_argument("--signal", required=True, help="0 in this signal means: 0 W")
    setpoints = kinds.add_parser("mqtt")
    setpoints.add_argument("--broker-port", type=int, required=True)
    setpoints.add_argument("--topic", required=True)
    setpoints.add_argument("--rate-base-w", type=float, required=True, help="124 WChaMax in W")
    setpoints.add_argument(
        "--discharge-base-w", type=float, required=True, help="WDisChaMax (120 MaxDisChaRte) in W"
    )
    setpoints.add_argument("--rate-sf", type=int, required=True, help="124 InOutWRte_SF")
    args = parser.parse_args(argv)
    # SIGTERM from the bench: leave through the finally blocks (sockets closed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.kind == "can":
        react_to_frames(args)
    else:
        react_to_setpoints(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
