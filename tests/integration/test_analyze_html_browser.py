"""The page of ``penstock analyze --html`` in a real browser: headless Chromium (Debian's package,
driven over the DevTools protocol with aiohttp's websocket client) loads it without console
errors or exceptions, and a screenshot, decoded here (zlib and the PNG filters), shows the
waterfall's bars in the critical-path colour and the other colour where the page put them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from penstock.dev.html import CRITICAL_COLOUR, OTHER_COLOUR
from tests.support import tool
from tests.unit.test_analyze import RECORDS, pipeline_doc

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 1100, 900
STEP = 30.0  # seconds for any one DevTools answer or event
# No traffic beyond loopback: Chromium's own update, sync and translate calls are off.
QUIET = [
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
    "--metrics-recording-only",
    "--disable-dev-shm-usage",
]


@dataclass
class Chromium:
    process: subprocess.Popen[bytes]
    websocket_url: str  # the browser's DevTools endpoint
    log: Path


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    """A headless Chromium with DevTools on a port of its choosing; killed whatever happens."""
    binary = tool("chromium")  # fails naming the apt package when it is not installed
    profile = Path(tempfile.mkdtemp(prefix="penstock-chromium-"))
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                *QUIET,
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: the renderers go with it
        )
    try:
        # Port 0: Chromium picks a free one and writes "PORT\n/devtools/browser/ID" here.
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if process.poll() is not None:
                pytest.fail(f"chromium exited with {process.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"chromium wrote no DevToolsActivePort in 60 s: {log.read_text()[-2000:]}")  # fmt: skip
            time.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        yield Chromium(process, f"ws://127.0.0.1:{port}{path}", log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
        log.unlink(missing_ok=True)


# --------------------------------------------------------------------------- DevTools


@dataclass
class Session:
    """One page target over the browser's websocket (flat sessions: sessionId per message)."""

    ws: aiohttp.ClientWebSocketResponse
    session_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session_id is not None:
            message["sessionId"] = self.session_id
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = await self.receive(method)
            if reply.get("id") == self._next:
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def wait_event(self, method: str) -> dict[str, Any]:
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == self.session_id:
                    return event
            await self.receive(method)

    async def receive(self, waiting_for: str) -> dict[str, Any]:
        """The next message (events are kept); fails the test after STEP seconds."""
        try:
            frame = await self.ws.receive(STEP)
        except TimeoutError:
            pytest.fail(f"DevTools: nothing while waiting for {waiting_for} in {STEP} s")
        assert frame.type == aiohttp.WSMsgType.TEXT, f"DevTools closed: {frame}"
        message: dict[str, Any] = json.loads(frame.data)
        if "method" in message:
            self.events.append(message)
        return message

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries seen so far."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")  # fmt: skip
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(f"console.error: {[a.get('value') for a in params.get('args', [])]}")
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found


@dataclass
class Visit:
    errors: list[str]
    bars: list[dict[str, Any]]  # each waterfall bar: class, stage, its box in CSS pixels
    png: bytes
    probe_errors: list[str]  # after a deliberate error: shows the collection works


BARS_JS = """JSON.stringify([...document.querySelectorAll('#waterfall-svg rect.bar')].map(r => {
  const b = r.getBoundingClientRect();
  return {cls: r.getAttribute('class'), stage: r.dataset.stage,
          x: b.x, y: b.y, w: b.width, h: b.height};
}))"""


async def visit(browser: Chromium, url: str) -> Visit:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(browser.websocket_url, max_msg_size=0) as ws,
    ):
        root = Session(ws)
        target = await root.call("Target.createTarget", url="about:blank")
        attached = await root.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Session(ws, attached["sessionId"], root.events)
        for domain in ("Runtime", "Log", "Page"):
            await page.call(f"{domain}.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,  # CSS pixels are screenshot pixels
            mobile=False,
        )
        page.events.clear()  # about:blank's own events are not the page's
        await page.call("Page.navigate", url=url)
        await page.wait_event("Page.loadEventFired")
        await asyncio.sleep(0.3)  # late errors (none expected: the page has no script)
        found = await page.call("Runtime.evaluate", expression=BARS_JS, returnByValue=True)
        bars = json.loads(found["result"]["value"])
        shot = await page.call("Page.captureScreenshot", format="png")
        errors = page.errors()
        # A deliberate console.error and uncaught exception must be seen, or the checks
        # above prove nothing.
        await page.call(
            "Runtime.evaluate",
            expression="console.error('probe'); setTimeout(() => { throw new Error('probe') })",
        )
        while len(page.errors()) < len(errors) + 2:
            await page.receive("the probe's console error and exception")
        return Visit(errors, bars, base64.b64decode(shot["data"]), page.errors()[len(errors) :])


# --------------------------------------------------------------------------- PNG


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, rows of RGB(A) bytes): 8-bit RGB or RGBA, no interlace."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    out = bytearray(height * stride)
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + predictor) & 0xFF
        else:
            assert kind == 0, f"PNG filter type {kind}"
        out[y * stride : (y + 1) * stride] = line
        previous = line
    return width, height, bpp, bytes(out)


def rgb(colour: str) -> tuple[int, int, int]:
    value = int(colour.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def count(
    image: tuple[int, int, int, bytes], box: tuple[float, float, float, float], colour: str
) -> int:
    """Pixels of ``colour`` (within 3 per channel) in the box (x, y, width, height)."""
    width, height, bpp, pixels = image
    want = rgb(colour)
    x0, y0, w, h = box
    found = 0
    for y in range(max(0, int(y0)), min(height, int(y0 + h + 1))):
        for x in range(max(0, int(x0)), min(width, int(x0 + w + 1))):
            i = (y * width + x) * bpp
            if all(abs(pixels[i + k] - want[k]) <= 3 for k in range(3)):
                found += 1
    return found


# --------------------------------------------------------------------------- the test


def test_page_in_headless_chromium(tmp_path: Path, chromium: Chromium) -> None:
    profiles, pipeline, page = tmp_path / "p.jsonl", tmp_path / "pipeline.yaml", tmp_path / "r.html"
    profiles.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    pipeline.write_text(json.dumps(pipeline_doc()))
    command = [sys.executable, "-m", "penstock.cli", "analyze", str(profiles)]
    done = subprocess.run(
        [*command, "--pipeline", str(pipeline), "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    seen = asyncio.run(visit(chromium, page.as_uri()))

    assert seen.errors == []
    assert any("probe" in e and e.startswith("console.error") for e in seen.probe_errors), seen
    assert any("probe" in e and e.startswith("exception") for e in seen.probe_errors), seen
    # The typical request (the first: embed -> rerank -> generate, 42 ms) has 4 bars.
    assert sorted(bar["stage"] for bar in seen.bars) == ["embed", "generate", "rerank", "retrieve"]
    on_path = {bar["stage"] for bar in seen.bars if "critical" in bar["cls"].split()}
    assert on_path == {"embed", "rerank", "generate"}
    image = decode_png(seen.png)
    assert image[:2] == (WIDTH, HEIGHT)
    for bar in seen.bars:
        box = (bar["x"], bar["y"], bar["w"], bar["h"])
        assert bar["x"] >= 0 and bar["x"] + bar["w"] <= WIDTH and bar["y"] + bar["h"] <= HEIGHT
        inner = (bar["x"] + 1, bar["y"] + 1, bar["w"] - 3, bar["h"] - 3)  # past antialiasing
        area = int(inner[2]) * int(inner[3])
        mine, other = (CRITICAL_COLOUR, OTHER_COLOUR) if bar["stage"] in on_path else (OTHER_COLOUR, CRITICAL_COLOUR)  # fmt: skip
        # The bar's box is (nearly) all its colour, none of the other one.
        assert count(image, inner, mine) >= 0.95 * area, (bar, count(image, inner, mine), area)
        assert count(image, box, other) == 0, bar
    # And the two colours appear nowhere above the waterfall (the header, the note).
    top = min(bar["y"] for bar in seen.bars)
    for colour in (CRITICAL_COLOUR, OTHER_COLOUR):
        assert count(image, (0, 0, WIDTH, top - 30), colour) == 0
