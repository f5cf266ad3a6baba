"""``https://`` stage URLs: the router speaks TLS to them (port 443 by default, SNI, the
certificate verified against the system CA bundle or ``--stage-ca-file``, hostname checked).

The stages are real aiohttp servers with TLS on 127.0.0.1, their certificates made for the test
with the ``openssl`` command; every case runs on asyncio's loop and on uvloop (the router's
loop in production).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from penstock.contract.topology import StageRoute, Topology
from penstock.dataplane.gateway.config import HostPort
from penstock.dataplane.router import Router, RouterConfig
from penstock.dataplane.upstream import pool_for
from tests.support import tool

pytestmark = [
    pytest.mark.integration,
]

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate (what --stage-ca-file names)
    good: tuple[Path, Path]  # certificate and key for localhost / 127.0.0.1, signed by the CA
    wrong_name: tuple[Path, Path]  # signed by the CA, for another name only


def _openssl(*args: str | Path) -> None:
    subprocess.run([tool("openssl"), *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    base = tmp_path_factory.mktemp("tls")
    ca_key, ca = base / "ca.key", base / "ca.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=penstock test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip

    def leaf(name: str, san: str) -> tuple[Path, Path]:
        key, csr, cert, ext = (base / f"{name}.{kind}" for kind in ("key", "csr", "pem", "ext"))
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext,
        )  # fmt: skip
        return cert, key

    return Certs(
        ca, leaf("localhost", "DNS:localhost,IP:127.0.0.1"), leaf("other", "DNS:other.test")
    )


@dataclass
class Seen:
    """What the TLS stage saw: per request, whether it came over TLS, and the Host header."""

    requests: list[tuple[bool, str]] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)


async def tls_stage(
    cert: tuple[Path, Path] | None, seen: Seen, *, stream: bool = False
) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        seen.requests.append(
            (transport.get_extra_info("ssl_object") is not None, request.headers["Host"])
        )
        seen.connections.add(id(transport))
        body = await request.json()
        if not stream:
            return web.json_response({"tls": True, "got": body})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in (b"data: one\n\n", b"data: two\n\n"):
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*cert)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, site.port


async def through_router(
    url: str, ca_file: Path | None, requests: int = 1, *, stream: bool = False
) -> list[tuple[int, Any]]:
    topology = Topology(
        pipeline="secure",
        namespace="ns",
        output="s",
        stages={"s": StageRoute("s", url, stream=stream, timeout_seconds=10)},
    )
    config = RouterConfig(
        listen=HostPort("127.0.0.1", 0),
        topology=topology,
        admin_listen=HostPort("127.0.0.1", 0),
        stage_ca_file=str(ca_file) if ca_file else None,
    )
    router = Router(config)
    await router.start()
    answers: list[tuple[int, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for number in range(requests):
                async with session.post(
                    f"http://127.0.0.1:{router.port}/", json={"n": number}
                ) as response:
                    if response.content_type == "application/json":
                        answers.append((response.status, await response.json()))
                    else:
                        answers.append((response.status, await response.read()))
    finally:
        await router.stop()
    return answers


def run(loop: str, coroutine: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await coroutine()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(bounded())


@pytest.mark.parametrize("loop", list(LOOPS))
def test_https_stage_over_verified_tls_with_keep_alive(certs: Certs, loop: str) -> None:
    async def scenario() -> None:
        seen = Seen()
        runner, port = await tls_stage(certs.good, seen)
        try:
            answers = await through_router(f"https://localhost:{port}", certs.ca, requests=3)
        finally:
            await runner.cleanup()
        assert answers == [(200, {"tls": True, "got": {"n": n}}) for n in range(3)]
        assert seen.requests == [(True, f"localhost:{port}")] * 3
        assert len(seen.connections) == 1  # one TLS connection, kept alive

        seen = Seen()
        runner, port = await tls_stage(certs.good, seen, stream=True)
        try:
            streamed = await through_router(f"https://127.0.0.1:{port}", certs.ca, stream=True)
        finally:
            await runner.cleanup()
        assert streamed == [(200, b"data: one\n\ndata: two\n\n")]
        assert seen.requests == [(True, f"127.0.0.1:{port}")]

    run(loop, scenario)


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("untrusted", "CERTIFICATE_VERIFY_FAILED"),  # only the system CA bundle: not our CA
        ("wrong-name", "CERTIFICATE_VERIFY_FAILED"),  # trusted CA, certificate for other.test
        ("plain-http-server", "SSL"),  # https:// to a server without TLS
        ("http-url-to-tls-server", "stage 's'"),  # plain HTTP to a TLS port: never a 200
    ],
)
def test_tls_failures_are_502_naming_the_stage(
    certs: Certs, loop: str, case: str, message: str
) -> None:
    async def scenario() -> None:
        seen = Seen()
        cert = {"wrong-name": certs.wrong_name, "plain-http-server": None}.get(case, certs.good)
        runner, port = await tls_stage(cert, seen)
        scheme = "http" if case == "http-url-to-tls-server" else "https"
        ca = None if case == "untrusted" else certs.ca
        try:
            answers = await through_router(f"{scheme}://localhost:{port}", ca)
        finally:
            await runner.cleanup()
        [(status, body)] = answers
        assert status == 502, body
        assert body["stage"] == "s" and body["pipeline"] == "secure"
        assert message in body["error"], body["error"]
        if case == "wrong-name":
            assert "Hostname mismatch" in body["error"] or "hostname" in body["error"]
        assert seen.requests == []  # no request reached the stage's handler

    run(loop, scenario)


def test_pool_for_picks_tls_and_default_ports() -> None:
    pool, target = pool_for("https://stage.example")
    assert (pool.host, pool.port, pool.tls is not None, target) == ("stage.example", 443, True, "/")
    assert pool.authority == "stage.example"
    pool, target = pool_for("https://stage.example:8443/v1/run?x=1")
    assert (pool.port, pool.authority, target) == (8443, "stage.example:8443", "/v1/run?x=1")
    pool, target = pool_for("http://stage.example/")
    assert (pool.port, pool.tls, pool.authority, target) == (80, None, "stage.example", "/")
    pool, _ = pool_for("http://[::1]:9000")
    assert (pool.host, pool.authority) == ("::1", "[::1]:9000")
    with pytest.raises(ValueError, match="not an http"):
        pool_for("ftp://stage.example")
