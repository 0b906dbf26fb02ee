"""A real MQTT broker for tests and the demo: ``mosquitto`` on a free loopback port.

``Mosquitto`` writes its own config into a directory, starts the broker, waits until the port
accepts connections, and can stop and start it again on the same port mid-test (by default the
broker keeps no persistence, so a restart loses retained messages, as a real broker that lost its
disk would).

With ``persistence=True`` the broker saves its state when stopped and restores it when started
again: retained messages and the sessions (subscriptions, queued QoS 1 messages) of clients
that asked for a persistent session survive the restart.

``make_tls_files`` generates a throw-away PKI with the ``cryptography`` package: a CA, a server
certificate for 127.0.0.1/localhost, a client certificate, and an unrelated second CA for
"wrong CA" tests. ``make_password_file`` writes a mosquitto password file with
``mosquitto_passwd``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str | None:
    """The broker binary, or None when mosquitto is not installed."""
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    return next((path for path in MOSQUITTO_PATHS if Path(path).is_file()), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a generated test PKI."""

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path
    other_ca_file: Path  # a CA that signed none of the above


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The broker side of TLS: its certificate, and the CA it checks client certificates with."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True


class Mosquitto:
    """A mosquitto process on 127.0.0.1 with a generated config; a context manager."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        persistence: bool = False,
        binary: str | None = None,
        acl_file: Path | None = None,
    ) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.password_file = password_file
        self.persistence = persistence
        self.acl_file = acl_file  # who may publish and subscribe where (mosquitto's acl_file)
        self.binary = binary or find_mosquitto()
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_config(self) -> None:
        lines = [
            f"user {getpass.getuser()}",  # as root, mosquitto would otherwise drop to 'mosquitto'
            "per_listener_settings false",
            # Nagle off toward the clients, as a broker serving chargers should run: with it on
            # (mosquitto's default), a burst of acks from the charger (the durable acks of a
            # slow card, issue 15) holds the next setpoint behind the charger's delayed ACK,
            # up to 40 ms (bench/storage.py: setpoint p99 39 ms with it, 4.4 ms without).
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.log_file}",
            "log_type all",
            "log_timestamp true",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        if self.running:
            return
        self.write_config()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"mosquitto exited with code {code}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mosquitto did not listen on port {self.port}: {self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL if it lingers); the port is free afterwards."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def reload(self) -> None:
        """Make the running broker read its password and ACL files again (SIGHUP)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def make_password_file(path: Path, username: str, password: str) -> Path:
    """A mosquitto password file holding one user (hashed by ``mosquitto_passwd``)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise RuntimeError("mosquitto_passwd is not installed (it ships with mosquitto)")
    path.unlink(missing_ok=True)
    subprocess.run(
        [tool, "-b", "-c", str(path), username, password],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return path


def ca_certificate(
    common_name: str, *, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (EC P-256, may sign certificates, no intermediate below
    it) and its key, valid from ``not_before`` to ``not_after``."""
    from cryptography import x509  # noqa: PLC0415  (only TLS tests need cryptography)
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_tls_files(directory: Path, client_name: str = "charger") -> TlsFiles:
    """Generate a CA, a server certificate for 127.0.0.1, a client certificate and an unrelated
    CA, as PEM files in ``directory``. Keys are EC P-256; certificates are valid for a day."""
    # Imported here: only TLS tests need the cryptography package (a dev extra).
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        return ca_certificate(
            common_name,
            not_before=now - dt.timedelta(minutes=5),
            not_after=now + dt.timedelta(days=1),
        )

    def make_leaf(
        common_name: str,
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        *,
        server: bool,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    ca = make_ca("v2g test CA")
    other_ca = make_ca("v2g unrelated CA")
    server_cert, server_key = make_leaf("localhost", ca, server=True)
    client_cert, client_key = make_leaf(client_name, ca, server=False)
    return TlsFiles(
        ca_file=write_cert(ca[0], directory / "ca.pem"),
        server_cert_file=write_cert(server_cert, directory / "server.pem"),
        server_key_file=write_key(server_key, directory / "server.key"),
        client_cert_file=write_cert(client_cert, directory / "client.pem"),
        client_key_file=write_key(client_key, directory / "client.key"),
        other_ca_file=write_cert(other_ca[0], directory / "other-ca.pem"),
    )
