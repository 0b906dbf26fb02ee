"""probe broker against a real mosquitto with TLS: a good connection with its figures, and each
failure named: DNS, nothing listening, an untrusted CA, a certificate for another host name, an
expired certificate, a missing client certificate, a wrong password."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import parse_config
from controller.probe.broker import probe_broker
from controller.probe.report import Report
from hil.mosquitto import (
    BrokerTls,
    Mosquitto,
    TlsFiles,
    free_port,
    make_password_file,
    make_tls_files,
)
from tests.probe.pki import own_ca, server_certificate
from tests.probe.support import cli, config_text

PREFIX = "v2g/site-1/c1"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


def aggregator(host: str, port: int, **extra: str) -> str:
    fields = [f"broker: {{host: '{host}', port: {port}}}"]
    fields += [f"{key}: {value}" for key, value in extra.items()]
    return "{" + ", ".join(fields) + "}"


def tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    pair = "" if cert is None or key is None else f", cert_file: '{cert}', key_file: '{key}'"
    return f"{{ca_file: '{ca}'{pair}}}"


def probe(aggregator_yaml: str) -> tuple[int, str]:
    config = parse_config(config_text(aggregator=aggregator_yaml))
    out = io.StringIO()
    report = Report(out)
    asyncio.run(probe_broker(config, report))
    return report.exit_code, out.getvalue()


@pytest.fixture
def mutual_tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    passwords = make_password_file(tmp_path / "passwd", "charger-1", "s3cret")
    broker_tls = BrokerTls(tls_files.ca_file, tls_files.server_cert_file, tls_files.server_key_file)
    with Mosquitto(tmp_path, tls=broker_tls, password_file=passwords) as broker:
        yield broker


def login(tmp_path: Path, password: str) -> dict[str, str]:
    path = tmp_path / f"password-{password}"
    path.write_text(password + "\n", encoding="utf-8")
    return {"username": "charger-1", "password_file": f"'{path}'"}


def test_a_good_connection_shows_the_certificate_login_and_round_trip(
    tmp_path: Path, tls_files: TlsFiles, mutual_tls_broker: Mosquitto
) -> None:
    f = tls_files
    status, text = probe(
        aggregator(
            "127.0.0.1",
            mutual_tls_broker.port,
            tls=tls(f.ca_file, f.client_cert_file, f.client_key_file),
            **login(tmp_path, "s3cret"),
        )
    )
    assert status == 0, text
    assert "DNS:                 127.0.0.1 -> 127.0.0.1" in text
    assert "certificate verified" in text
    assert "certificate subject: CN=localhost" in text
    assert "certificate issuer:  CN=v2g test CA" in text
    assert "host name matches:   yes" in text
    assert "CONNACK: accepted as charger-1 (client id v2g-site-1-c1-probe)" in text
    assert f"subscribed:          {PREFIX}/setpoint, QoS 1 granted" in text
    assert "round trip:" in text
    assert f"broker OK: 127.0.0.1:{mutual_tls_broker.port}, MQTT 5" in text


def test_a_wrong_password_is_a_refused_login(
    tmp_path: Path, tls_files: TlsFiles, mutual_tls_broker: Mosquitto
) -> None:
    f = tls_files
    status, text = probe(
        aggregator(
            "127.0.0.1",
            mutual_tls_broker.port,
            tls=tls(f.ca_file, f.client_cert_file, f.client_key_file),
            **login(tmp_path, "guess"),
        )
    )
    assert status == 1
    assert "PROBLEM: login refused: CONNACK 0x87" in text  # mosquitto 2.0's answer
    assert "check: aggregator.username charger-1 and the password in" in text


def test_a_missing_client_certificate_is_named(
    tmp_path: Path, tls_files: TlsFiles, mutual_tls_broker: Mosquitto
) -> None:
    status, text = probe(
        aggregator(
            "127.0.0.1",
            mutual_tls_broker.port,
            tls=tls(tls_files.ca_file),
            **login(tmp_path, "s3cret"),
        )
    )
    assert status == 1
    assert "PROBLEM: MQTT:" in text
    assert "check: the broker asks for a client certificate" in text


def test_an_untrusted_ca_shows_the_certificate_and_its_issuer(
    tls_files: TlsFiles, mutual_tls_broker: Mosquitto
) -> None:
    status, text = probe(
        aggregator("127.0.0.1", mutual_tls_broker.port, tls=tls(tls_files.other_ca_file))
    )
    assert status == 1
    assert "certificate subject: CN=localhost" in text
    assert "PROBLEM: TLS: the broker's certificate is not trusted" in text
    assert "check: tls.ca_file holds the CA that signed it (issuer CN=v2g test CA)" in text


def test_a_certificate_for_another_host_name_is_named(tmp_path: Path) -> None:
    ca, ca_key = own_ca(tmp_path)
    now = dt.datetime.now(dt.UTC)
    cert, key = server_certificate(
        tmp_path,
        "elsewhere",
        ca_cert=ca,
        ca_key=ca_key,
        dns_names=("broker.example",),
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=1),
    )
    broker_tls = BrokerTls(ca, cert, key, require_certificate=False)
    with Mosquitto(tmp_path, tls=broker_tls) as broker:
        status, text = probe(aggregator("127.0.0.1", broker.port, tls=tls(ca)))
    assert status == 1
    assert "certificate names:   broker.example" in text
    assert "host name matches:   no (127.0.0.1)" in text
    assert "PROBLEM: TLS: the broker's certificate is not for 127.0.0.1 (its names: " in text


def test_an_expired_certificate_is_named_with_its_dates(tmp_path: Path) -> None:
    ca, ca_key = own_ca(tmp_path)
    now = dt.datetime.now(dt.UTC)
    cert, key = server_certificate(
        tmp_path,
        "expired",
        ca_cert=ca,
        ca_key=ca_key,
        dns_names=("localhost",),
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    broker_tls = BrokerTls(ca, cert, key, require_certificate=False)
    with Mosquitto(tmp_path, tls=broker_tls) as broker:
        status, text = probe(aggregator("localhost", broker.port, tls=tls(ca)))
    assert status == 1
    expired_on = (now - dt.timedelta(days=1)).strftime("%b %d")
    assert "certificate valid:" in text
    assert "PROBLEM: TLS: the broker's certificate has expired (valid until " in text
    assert expired_on.replace(" 0", "  ") in text or expired_on in text
    assert "check: the charger's clock (timedatectl)" in text


def test_nothing_listening_and_an_unknown_host_are_named() -> None:
    status, text = probe(aggregator("127.0.0.1", free_port()))
    assert status == 1
    assert "PROBLEM: TCP: connection to 127.0.0.1:" in text
    assert "refused: nothing listens there" in text
    status, text = probe(aggregator("no-such-broker.invalid", 8883))
    assert status == 1
    assert "PROBLEM: DNS: no-such-broker.invalid does not resolve" in text


def test_cli_exit_status_and_help(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(aggregator=aggregator("127.0.0.1", free_port())), "utf-8")

    async def main() -> None:
        status, out, err = await cli("probe", "broker", "-c", str(config))
        assert status == 1, out + err
        assert "PROBLEM: TCP" in out
        status, out, _ = await cli("probe", "broker", "--help")
        assert status == 0
        assert "examples:\n  v2g-controller probe broker -c" in out

    asyncio.run(main())
