"""TLS and login for the aggregator link: the client TLS context, the password file, and a
handshake checked once with asyncio before paho connects.

Every failure is an ``AggregatorLinkError`` whose message names the config key and the file,
so a technician knows which file to fix.

Why the handshake is checked first: paho-mqtt leaves the socket open when a TLS handshake fails
inside ``connect()`` (seen as "ResourceWarning: unclosed ssl.SSLSocket", e.g. HABApp#452), so
before each TLS connect the link performs the handshake once itself (``check_handshake``): a
broker certificate the CA does not vouch for is then reported cleanly and nothing leaks.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from controller.config import MqttTlsConfig
from controller.errors import AggregatorLinkError


def read_password(path: str) -> str:
    """The MQTT password from its file (one line; a trailing newline is not part of it)."""
    where = f"password_file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AggregatorLinkError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise AggregatorLinkError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise AggregatorLinkError(f"{where}: permission denied") from None
    except UnicodeDecodeError:
        raise AggregatorLinkError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise AggregatorLinkError(f"{where}: cannot read: {exc.strerror or exc}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise AggregatorLinkError(f"{where}: the file is empty")
    return password


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """A client TLS context: the broker verified against the CA (and its host name), TLS 1.2 or
    newer, and the client certificate when configured."""
    for key, path in (
        ("ca_file", tls.ca_file),
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
    ):
        if path is not None and not Path(path).is_file():
            raise AggregatorLinkError(f"tls.{key} {path}: file not found")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise AggregatorLinkError(
            f"tls.ca_file {tls.ca_file}: not a PEM CA certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise AggregatorLinkError(
            f"tls.ca_file {tls.ca_file}: cannot read: {exc.strerror or exc}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except ssl.SSLError as exc:
            raise AggregatorLinkError(
                f"tls.cert_file {tls.cert_file} / tls.key_file {tls.key_file}: not a matching "
                f"PEM certificate and key ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise AggregatorLinkError(
                f"tls.cert_file {tls.cert_file}: cannot read: {exc.strerror or exc}"
            ) from None
    return context


async def check_handshake(
    host: str, port: int, context: ssl.SSLContext, *, timeout_s: float
) -> None:
    """Handshake once with asyncio and close again, so a refused certificate is a clean error
    (see the module docstring for why paho cannot be left to find out)."""
    where = f"{host}:{port}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise AggregatorLinkError(
            f"TLS to {where} refused: the broker's certificate is not trusted "
            f"({exc.verify_message})"
        ) from None
    except ssl.SSLError as exc:
        raise AggregatorLinkError(
            f"TLS handshake with {where} failed: {exc.reason or exc}"
        ) from None
    except TimeoutError:
        raise AggregatorLinkError(
            f"cannot connect to {where}: no answer within {timeout_s:g} s"
        ) from None
    except OSError as exc:
        raise AggregatorLinkError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except OSError:  # includes TimeoutError and ssl.SSLError
                writer.transport.abort()
