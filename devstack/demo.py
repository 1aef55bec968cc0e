"""`make demo`: start the dev stack, load the example tenant, register a phone, call into Stasis.

Prints, step by step, what happened on the real stack.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devstack import sipp
from devstack.chroot import asterisk_version
from devstack.stack import Stack
from devstack.stasis_stub import answer_first_call

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo-tenant.yaml"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


async def place_call(stack: Stack) -> tuple[sipp.SippResult, list[str]]:
    ready = asyncio.Event()
    seen: list[dict[str, Any]] = []
    app = asyncio.create_task(answer_first_call(stack.settings, ready, seen))
    await asyncio.wait_for(ready.wait(), 10)
    result = await asyncio.to_thread(
        sipp.call, stack.settings.sip_addr, "1001", "demo.example", "demo-1001", "2000", hold_s=1
    )
    await asyncio.wait_for(app, 15)
    log = []
    for event in seen:
        if event["type"] == "StasisStart":
            chan = event["channel"]
            log.append(f"StasisStart: {chan['caller']['number']} dialed {event['args'][0]} ({chan['name']})")
            log.append(f"answered over ARI: HTTP {event.get('answer_status')}")
        elif event["type"] == "StasisEnd":
            log.append("StasisEnd: the caller hung up")
    return result, log


def main() -> int:
    stack = Stack.named("dev")
    t0 = time.monotonic()
    say("starting the dev stack (private Postgres + Asterisk 22 in the sid chroot)...")
    stack.up()
    say(f"stack up in {time.monotonic() - t0:.1f}s: {asterisk_version(stack.chroot)}, SIP on {stack.settings.sip_addr}")
    env = dict(__import__("os").environ, **stack.settings.exports())
    p = subprocess.run([sys.executable, "-m", "pbxctl", "apply", str(EXAMPLE)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        say(f"apply failed: {p.stderr.strip()}")
        return 1
    say(f"loaded {EXAMPLE.name}: {p.stderr.strip()}")
    r = sipp.register(stack.settings.sip_addr, "1001", "demo.example", "demo-1001")
    say(
        f"phone 1001@demo.example REGISTER: responses {r.responses}"
        + (" (registered)" if r.final == 200 else " (FAILED)")
    )
    result, log = asyncio.run(place_call(stack))
    say("phone 1001 calls 2000 (the Team group):")
    for line in log:
        say(f"  stand-in Stasis app: {line}")
    outcome = "answered and hung up after 1 s" if 200 in result.responses else "not answered"
    say(f"  caller saw: {result.responses} -> {outcome}")
    say("the stack keeps running: `pbxctl dev status` shows it, `pbxctl dev down` stops it")
    for k, v in stack.settings.exports().items():
        print(f"export {k}={v}")
    return 0 if (r.final == 200 and 200 in result.responses) else 1


if __name__ == "__main__":
    sys.exit(main())
