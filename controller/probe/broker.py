"""``v2g-controller probe broker``: can this charger reach its broker, and if not, where it stops.

Each configured address (``broker.host`` and the failover list) is taken step by step, each
step reported, the first failing one named with what to check:

1. DNS: the host name resolves (``getaddrinfo``);
2. TCP: a connection opens (refused: nothing listens; timeout: a firewall drops it);
3. TLS (with ``aggregator.tls``): the handshake with the daemon's own context
   (``aggregator/tls.py``); the broker's certificate is shown (subject, names, validity dates,
   issuer) whether or not it verified, with the reason it did not (expired, not yet valid, the
   host name not among its names, a CA other than ``tls.ca_file``);
4. MQTT: CONNECT with the configured login (``aggregator/client.py``'s client), the CONNACK's
   reason code in words (MQTT 5.0 §3.2.2.2; 3.1.1 return codes §3.2.2.3);
5. SUBSCRIBE to the setpoint topic at QoS 1; its SUBACK's round trip is the figure shown
   (a SUBACK reason of 0x80 or above is a refusal, MQTT 5.0 §3.9.3).

The probe connects with its own client id (the configured one plus ``-probe``) and no Last Will:
the running daemon's session is not taken over (MQTT 5.0 §3.1.4: a second connection with the
same client id closes the first) and the aggregator sees no "offline".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.aggregator.client import ClientLog, NoConnackError, describe, new_client
from controller.aggregator.client import reason_code as as_code
from controller.aggregator.tls import read_password, tls_context
from controller.aggregator.topics import Topics
from controller.config import Config
from controller.errors import AggregatorLinkError
from controller.probe.report import Report

CONNECT_TIMEOUT_S = 10.0  # as the link's CONNECT_TIMEOUT_S: TCP, TLS, CONNACK, SUBACK each
EXPIRY_WARNING_DAYS = 30
# OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) the probe explains.
X509_NOT_YET_VALID = 9
X509_EXPIRED = 10
X509_HOSTNAME_MISMATCH = 62
SUBACK_FAILURE = 0x80  # MQTT 5.0 §3.9.3: reason codes of 0x80 and above are failures
# CONNACK reasons (MQTT 5.0 §3.2.2.2) and 3.1.1 return codes (§3.2.2.3) with what to check.
# 0x86 bad user name or password, 0x87 not authorized; 3.1.1: 4 and 5 (the same two).
LOGIN_CODES = frozenset({0x86, 0x87, 4, 5})
UNSUPPORTED_PROTOCOL = {0x84, 1}


def _certificate_fields(der: bytes) -> dict[str, Any]:
    """The decoded fields of a DER certificate (subject, issuer, dates, names).

    The standard library decodes a certificate only from a file (``_test_decode_cert``, the
    decoder behind ``getpeercert``); without it the probe shows no details, never fails."""
    decoder = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decoder is None:
        return {}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "broker.pem"
        path.write_text(ssl.DER_cert_to_PEM_cert(der), encoding="ascii")
        try:
            fields: dict[str, Any] = decoder(str(path))
        except (ssl.SSLError, ValueError):
            return {}
    return fields


def _name(entries: Any) -> str:
    """A certificate subject or issuer ((('commonName', 'x'),), ...) as ``CN=x, O=y``."""
    short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}
    parts = [f"{short.get(key, key)}={value}" for rdn in entries or () for key, value in rdn]
    return ", ".join(parts) or "(empty)"


def _alt_names(fields: dict[str, Any]) -> list[tuple[str, str]]:
    return [(kind, value) for kind, value in fields.get("subjectAltName", ())]


def host_matches(host: str, fields: dict[str, Any]) -> bool:
    """Whether ``host`` is among the certificate's names (RFC 6125: the subject alternative
    names; a ``*.`` wildcard stands for exactly one leftmost label)."""
    names = _alt_names(fields)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return any(
            kind == "IP Address" and ipaddress.ip_address(value.strip()) == address
            for kind, value in names
        )
    wanted = host.lower().rstrip(".")
    for kind, value in names:
        if kind != "DNS":
            continue
        pattern = value.lower().rstrip(".")
        if pattern == wanted:
            return True
        wildcard = pattern.startswith("*.") and "." in wanted
        if wildcard and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _date(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
    except (ValueError, TypeError):
        return None


def _show_certificate(report: Report, host: str, fields: dict[str, Any]) -> None:
    if not fields:
        report.note("broker certificate: no details available")
        return
    names = ", ".join(value for _, value in _alt_names(fields)) or "none"
    report.fact("certificate subject", _name(fields.get("subject")))
    report.fact("certificate names", names)
    report.fact("certificate issuer", _name(fields.get("issuer")))
    report.fact(
        "certificate valid",
        f"{fields.get('notBefore', '?')} to {fields.get('notAfter', '?')}",
    )
    report.fact("host name matches", "yes" if host_matches(host, fields) else f"no ({host})")


async def probe_broker(config: Config, report: Report) -> None:
    agg = config.aggregator
    if not agg.enabled or agg.broker is None:
        report.heading("broker: aggregator.enabled is false: the charger runs on its local policy")
        return
    broker = agg.broker
    addresses = [(broker.host, broker.port)] + [
        (other.host, other.port or broker.port) for other in broker.failover
    ]
    for host, port in addresses:
        await _probe_address(config, host, port, report)


async def _probe_address(config: Config, host: str, port: int, report: Report) -> None:
    agg = config.aggregator
    assert agg.broker is not None  # noqa: S101  checked by the caller
    where = f"{host}:{port}"
    report.heading(f"broker: {where}, MQTT {agg.broker.protocol}, TLS {'on' if agg.tls else 'off'}")
    if not await _resolve(host, port, report):
        return
    if not await _tcp(host, port, report):
        return
    context: ssl.SSLContext | None = None
    if agg.tls is not None:
        try:
            context = tls_context(agg.tls)
        except AggregatorLinkError as exc:
            report.problem(str(exc), "the file named there (path, permissions, PEM format)")
            return
        if not await _tls(host, port, context, report):
            return
    password: str | None = None
    if agg.password_file is not None:
        try:
            password = read_password(agg.password_file)
        except AggregatorLinkError as exc:
            report.problem(str(exc), "aggregator.password_file: one line, readable by this user")
            return
    await _mqtt(config, host, port, report, context=context, password=password)


async def _resolve(host: str, port: int, report: Report) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        report.problem(
            f"DNS: {host} does not resolve ({exc.strerror})",
            "the spelling of broker.host",
            f"the charger's DNS: getent hosts {host}; resolvectl status",
        )
        return False
    except TimeoutError:
        report.problem(
            f"DNS: no answer for {host} within {CONNECT_TIMEOUT_S:g} s",
            "the charger's network and DNS server (resolvectl status)",
        )
        return False
    found = sorted({str(info[4][0]) for info in infos})
    report.fact("DNS", f"{host} -> {', '.join(found)}")
    return True


async def _tcp(host: str, port: int, report: Report) -> bool:
    started_s = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        report.problem(
            f"TCP: connection to {host}:{port} refused: nothing listens there",
            f"broker.port {port} (MQTT over TLS is usually 8883, plain 1883)",
            "that the broker is running",
        )
        return False
    except TimeoutError:
        report.problem(
            f"TCP: no answer from {host}:{port} within {CONNECT_TIMEOUT_S:g} s",
            "a firewall on the way (the site's router, the broker's security group) drops it",
        )
        return False
    except OSError as exc:
        report.problem(
            f"TCP: cannot connect to {host}:{port}: {exc.strerror or exc}",
            "the charger's network: ip route; ping the broker",
        )
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    report.fact("TCP", f"connected in {(time.monotonic() - started_s) * 1000:.0f} ms")
    return True


async def _peer_certificate(host: str, port: int) -> bytes | None:
    """The broker's certificate, fetched without verifying it (only to show it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        sock = writer.get_extra_info("ssl_object")
        return None if sock is None else sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):  # TimeoutError is an OSError
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _tls(host: str, port: int, context: ssl.SSLContext, report: Report) -> bool:
    """The daemon's handshake (its context, its host name check), the certificate shown."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        version = tls.version() if tls is not None else "?"
        cipher = tls.cipher()[0] if tls is not None and tls.cipher() else "?"
    except ssl.SSLCertVerificationError as exc:
        der = await _peer_certificate(host, port)
        fields = _certificate_fields(der) if der else {}
        _show_certificate(report, host, fields)
        _verification_problem(report, host, exc, fields)
        return False
    except ssl.SSLError as exc:
        report.problem(
            f"TLS: handshake with {host}:{port} failed: {exc.reason or exc}",
            "that the port is the broker's TLS port (8883), and the broker's TLS settings",
        )
        return False
    except TimeoutError:
        report.problem(f"TLS: no handshake within {CONNECT_TIMEOUT_S:g} s", "the broker's load")
        return False
    except OSError as exc:
        report.problem(f"TLS: connection lost: {exc.strerror or exc}", "the broker's log")
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    fields = _certificate_fields(der) if der else {}
    report.fact("TLS", f"{version}, {cipher}, certificate verified")
    _show_certificate(report, host, fields)
    not_after = _date(str(fields.get("notAfter", "")))
    if not_after is not None:
        days = (not_after - dt.datetime.now(dt.UTC)).days
        if days < EXPIRY_WARNING_DAYS:
            report.note(f"warning: the broker's certificate expires in {days} days")
    return True


def _verification_problem(
    report: Report, host: str, exc: ssl.SSLCertVerificationError, fields: dict[str, Any]
) -> None:
    code = exc.verify_code
    message = exc.verify_message
    if code == X509_EXPIRED:
        report.problem(
            f"TLS: the broker's certificate has expired (valid until {fields.get('notAfter')})",
            "the broker's operator renews it",
            "the charger's clock (timedatectl): a clock far ahead makes a valid one look expired",
        )
    elif code == X509_NOT_YET_VALID:
        report.problem(
            f"TLS: the broker's certificate is not valid yet (from {fields.get('notBefore')})",
            "the charger's clock (timedatectl: NTP synchronized?)",
        )
    elif code == X509_HOSTNAME_MISMATCH or (fields and not host_matches(host, fields)):
        names = ", ".join(value for _, value in _alt_names(fields)) or "none"
        report.problem(
            f"TLS: the broker's certificate is not for {host} (its names: {names})",
            "broker.host must be one of the certificate's names (a name, not an address, "
            "when the certificate has only names)",
        )
    else:
        report.problem(
            f"TLS: the broker's certificate is not trusted ({message})",
            f"tls.ca_file holds the CA that signed it (issuer {_name(fields.get('issuer'))})",
        )


async def _mqtt(
    config: Config,
    host: str,
    port: int,
    report: Report,
    *,
    context: ssl.SSLContext | None,
    password: str | None,
) -> None:
    agg = config.aggregator
    broker = agg.broker
    assert broker is not None  # noqa: S101  checked by the caller
    protocol = (
        aiomqtt.ProtocolVersion.V5 if broker.protocol == "5" else aiomqtt.ProtocolVersion.V311
    )
    client_id = broker.client_id or f"v2g-{config.site.site_id}-{config.site.charger_id}"
    topic = Topics.under(config.topic_prefix).setpoint
    client_log = ClientLog()
    client = new_client(
        broker,
        host=host,
        port=port,
        client_id=f"{client_id}-probe",
        protocol=protocol,
        username=agg.username,
        password=password,
        tls_context=context,
        will_topic=None,
        client_log=client_log,
        timeout_s=CONNECT_TIMEOUT_S,
    )
    login = f"as {agg.username}" if agg.username else "without a login"
    try:
        async with client:
            report.fact("MQTT", f"CONNACK: accepted {login} (client id {client_id}-probe)")
            started_s = time.monotonic()
            if protocol is aiomqtt.ProtocolVersion.V5:
                granted = await client.subscribe(
                    topic, options=SubscribeOptions(qos=1), timeout=CONNECT_TIMEOUT_S
                )
            else:
                granted = await client.subscribe(topic, qos=1, timeout=CONNECT_TIMEOUT_S)
            took_ms = (time.monotonic() - started_s) * 1000
            codes = [as_code(code) for code in granted]
            if not codes or codes[0] >= SUBACK_FAILURE:
                shown = ", ".join(f"0x{code:02X}" for code in codes) or "none"
                report.problem(
                    f"SUBSCRIBE to {topic} refused (SUBACK {shown})",
                    f"the broker's ACL for user {agg.username or '(anonymous)'}: it must allow "
                    f"subscribing to {config.topic_prefix}/#",
                    "aggregator.topic_prefix matches what the aggregator expects",
                )
                return
            report.fact("subscribed", f"{topic}, QoS {codes[0]} granted")
            report.fact("round trip", f"{took_ms:.0f} ms (SUBSCRIBE to SUBACK)")
            report.heading(f"broker OK: {host}:{port}, MQTT {broker.protocol}")
    except MqttConnectError as exc:
        _refused(config, report, as_code(exc.rc), str(exc))
    except aiomqtt.MqttError as exc:  # NoConnackError included
        text = describe(exc)
        detail = client_log.last
        if detail and detail not in text:
            text = f"{text}; {detail}"
        checks = ["the broker's log for why it closed the connection"]
        if isinstance(exc, NoConnackError):
            checks.insert(
                0,
                "broker.protocol: a broker that speaks only MQTT 3.1.1 may drop an MQTT 5 "
                "CONNECT (set protocol: '3.1.1')",
            )
        if "certificate required" in text.lower():
            checks.insert(
                0,
                "the broker asks for a client certificate: tls.cert_file and tls.key_file, "
                "signed by a CA the broker trusts",
            )
        report.problem(f"MQTT: {text}", *checks)


def _refused(config: Config, report: Report, code: int, text: str) -> None:
    agg = config.aggregator
    shown = f"CONNACK 0x{code:02X}" if code >= 0 else "CONNACK"
    if code in LOGIN_CODES:
        # Brokers differ in which of the two a wrong password gets (mosquitto 2.0: 0x87).
        report.problem(
            f"login refused: {shown} ({text})",
            f"aggregator.username {agg.username or '(none)'} and the password in "
            f"aggregator.password_file {agg.password_file or '(none)'}",
            "the broker's rules for this user and client id",
        )
    elif code in UNSUPPORTED_PROTOCOL:
        report.problem(
            f"the broker refused MQTT {agg.broker.protocol if agg.broker else '?'}: {shown}",
            "broker.protocol: '3.1.1' for a broker without MQTT 5",
        )
    else:
        report.problem(f"the broker refused the connection: {shown} ({text})", "the broker's log")
