"""TLS and login against a real mosquitto: mutual TLS works; a wrong CA, a missing client
certificate, a wrong password or a missing password file leave the link DOWN with a clear reason."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.aggregator.tls import read_password, tls_context
from controller.config import MqttTlsConfig
from controller.errors import AggregatorLinkError
from controller.links import LinkStatus
from hil.mosquitto import BrokerTls, Mosquitto, TlsFiles, find_mosquitto, make_password_file
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    report,
    setpoint,
    until,
)


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    tls = BrokerTls(tls_files.ca_file, tls_files.server_cert_file, tls_files.server_key_file)
    with Mosquitto(tmp_path, tls=tls) as running:
        yield running


def _tls_section(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    lines = ["  tls:", f"    ca_file: {ca}"]
    if cert is not None and key is not None:
        lines += [f"    cert_file: {cert}", f"    key_file: {key}"]
    return "\n".join(lines) + "\n"


def _aggregator_tls(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(str(files.client_cert_file), str(files.client_key_file))
    return context


def test_mutual_tls_with_a_client_certificate_works(
    tls_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    """With the CA and a client certificate the link is UP and setpoints flow over TLS."""
    config = make_config(
        tls_broker.port,
        _tls_section(tls_files.ca_file, tls_files.client_cert_file, tls_files.client_key_file),
    )

    async def scenario() -> None:
        link = make_link(config)
        runner = LinkRunner(link)
        async with Aggregator(tls_broker.port, _aggregator_tls(tls_files)) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-tls", 1200.0))
            assert await until(lambda: link.setpoint() is not None)
            link.report(report("sp-tls", 1200.0, source="aggregator"))
            assert (await aggregator.ack("sp-tls"))["applied_power_w"] == 1200.0

    asyncio.run(scenario())


def test_wrong_ca_leaves_the_link_down_with_the_reason(
    tls_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    """A broker certificate the configured CA did not sign is refused, and the reason says so."""
    config = make_config(
        tls_broker.port,
        _tls_section(
            tls_files.other_ca_file, tls_files.client_cert_file, tls_files.client_key_file
        ),
    )

    async def scenario() -> None:
        link = make_link(config)
        async with LinkRunner(link):
            assert await until(lambda: link.status is LinkStatus.DOWN)
            assert link.reason is not None
            assert "certificate is not trusted" in link.reason
            await asyncio.sleep(0.5)  # it keeps retrying, and keeps saying why
            assert link.status is LinkStatus.DOWN
            assert "not trusted" in (link.reason or "")

    asyncio.run(scenario())


def test_client_without_a_certificate_is_refused(
    tls_broker: Mosquitto, tls_files: TlsFiles
) -> None:
    """A broker that requires client certificates refuses a link without one; the reason shows
    the TLS alert."""
    config = make_config(tls_broker.port, _tls_section(tls_files.ca_file))

    async def scenario() -> None:
        link = make_link(config, connect_timeout_s=1.0)
        async with LinkRunner(link):
            assert await until(lambda: link.status is LinkStatus.DOWN, 4.0)
            assert link.reason is not None
            assert "cannot connect" in link.reason
            assert "certificate required" in link.reason

    asyncio.run(scenario())


def test_username_and_password_file_log_in(tmp_path: Path) -> None:
    """The password is read from password_file; a wrong one and a missing file are reported."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    passwords = make_password_file(tmp_path / "passwd", "charger-1", "s3cret")
    good = tmp_path / "good-password"
    good.write_text("s3cret\n", encoding="utf-8")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("guess\n", encoding="utf-8")

    async def scenario(port: int) -> None:
        login = "  username: charger-1\n  password_file: {}\n"
        link = make_link(make_config(port, login.format(good)))
        runner = LinkRunner(link)
        async with runner:
            await runner.up()

        for file, expected in (
            (wrong, "refused the connection"),
            (tmp_path / "missing", "file not found"),
        ):
            await refused(port, login.format(file), expected)

    async def refused(port: int, login: str, expected: str) -> None:
        link = make_link(make_config(port, login))
        async with LinkRunner(link):
            assert await until(lambda: link.status is LinkStatus.DOWN)
            assert expected in (link.reason or ""), link.reason

    with Mosquitto(tmp_path, password_file=passwords) as broker:
        asyncio.run(scenario(broker.port))


def test_password_file_problems_are_clear_errors(tmp_path: Path) -> None:
    """A missing, empty or directory password file raises AggregatorLinkError naming the file."""
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    for path, expected in (
        (tmp_path / "nope", "file not found"),
        (empty, "empty"),
        (tmp_path, "directory"),
    ):
        with pytest.raises(AggregatorLinkError, match=expected) as info:
            read_password(str(path))
        assert str(path) in str(info.value)
    secret = tmp_path / "secret"
    secret.write_text("pa ss\r\n", encoding="utf-8")
    assert read_password(str(secret)) == "pa ss"


def test_tls_file_problems_are_clear_errors(tmp_path: Path, tls_files: TlsFiles) -> None:
    """A missing or non-PEM CA, or a certificate that does not match its key, is named."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    cases = (
        (MqttTlsConfig(ca_file=str(tmp_path / "none.pem")), "tls.ca_file .* file not found"),
        (MqttTlsConfig(ca_file=str(garbage)), "tls.ca_file .* not a PEM CA certificate"),
        (
            MqttTlsConfig(
                ca_file=str(tls_files.ca_file),
                cert_file=str(tls_files.client_cert_file),
                key_file=str(tls_files.server_key_file),
            ),
            "not a matching PEM certificate and key",
        ),
    )
    for tls, expected in cases:
        with pytest.raises(AggregatorLinkError, match=expected):
            tls_context(tls)
