"""AT benchmark: driver round trips per second against the simulator, vs a raw pty echo.

Run: `.venv/bin/python -m tests.bench.bench_at [--quick]` (or `make bench` for all).

Both runs use the same simulator pty, in the same process and event loop:

- `raw echo`: pyserial-asyncio-fast on the pty slave writes b"AT\\r", the simulator side
  writes the bytes straight back (`Simulator.raw_echo`), the client waits for them: the
  floor of a round trip through the pty and the event loop.
- `driver`: `Modem.command("AT")` through the whole driver (lock, waiter, parser) to the
  simulator, which parses the line and answers "\\r\\nOK\\r\\n" (echo off, no delay).
- `send_sms`: whole single-part texts (PDU encode, prompt, body, +CMGS; the simulator
  decodes each PDU), per second.

The ratio driver / raw echo is the driver's (and simulator's) own overhead per round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import serial_asyncio_fast

from gsm.modem import Modem, Timeouts
from gsm.simulator import Simulator, running


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done() and self.buf.endswith(b"AT\r"):
            self.buf = b""
            self.waiter.set_result(None)


async def _raw(sim: Simulator, n: int) -> float:
    loop = asyncio.get_running_loop()
    sim.raw_echo = True
    proto = _Echo()
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, lambda: proto, sim.device, baudrate=115200
    )
    try:
        started = time.perf_counter()
        for _ in range(n):
            proto.waiter = loop.create_future()
            transport.write(b"AT\r")
            await proto.waiter
        took = time.perf_counter() - started
    finally:
        transport.close()
        await proto.closed
        sim.raw_echo = False
    return n / took


async def _driver(modem: Modem, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await modem.command("AT")
    return n / (time.perf_counter() - started)


async def _sends(modem: Modem, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await modem.send_sms("+12025550123", f"Sorry we missed your call ({i}).")
    return n / (time.perf_counter() - started)


async def _run(quick: bool) -> dict[str, Any]:
    n = 300 if quick else 3000
    rounds = 2 if quick else 5
    raw: list[float] = []
    drv: list[float] = []
    snd: list[float] = []
    async with running("sim800") as sim:
        for _ in range(rounds):  # interleaved: the machine's noise hits both alike
            raw.append(await _raw(sim, n))
            modem = Modem(sim.device, timeouts=Timeouts(health_interval=0))
            await modem.start()
            try:
                drv.append(await _driver(modem, n))
                snd.append(await _sends(modem, max(20, n // 10)))
            finally:
                await modem.close()
    raw_m, drv_m, snd_m = statistics.median(raw), statistics.median(drv), statistics.median(snd)
    ratio = drv_m / raw_m
    markdown = (
        "## AT driver round trips (tests/bench/bench_at.py)\n\n"
        f"{rounds} interleaved rounds of {n} round trips; medians. Driver and simulator run\n"
        "in one process and event loop, on one real pty.\n\n"
        "| what | per second | vs raw echo |\n|---|---:|---:|\n"
        f"| raw write/read echo over the pty | {raw_m:,.0f} | 1.00 |\n"
        f"| driver `AT` -> `OK` (parser, lock, waiter; simulator parses) | {drv_m:,.0f} "
        f"| {ratio:.2f} |\n"
        f"| driver `send_sms`, one part (encode, prompt, body, +CMGS) | {snd_m:,.0f} "
        f"| {snd_m / raw_m:.3f} |\n"
    )
    return {
        "raw_echo_per_s": raw_m,
        "driver_at_per_s": drv_m,
        "driver_ratio": ratio,
        "send_sms_per_s": snd_m,
        "markdown": markdown,
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure; return the numbers and a markdown section."""
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    result = run(parser.parse_args().quick)
    print(result.pop("markdown"))
    print(json.dumps(result, indent=1))
