"""`make demo`: start the dev stack and play one real call through the routing tree.

The call is examples/demo-call.yaml, played live by `pbxctl call play`: sipp phones register and
ring, the ARI controller run by `pbxctl serve` routes the call and bridges the answer. Prints what
the phones saw, next to what the simulator predicts, and the controller's log of the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from devstack.chroot import asterisk_version
from devstack.stack import Stack
from pbx_base import resources

SCENARIO = resources.on_disk(resources.example("demo-call.yaml"))


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def _event(ev: dict[str, object]) -> str:
    kind = next(k for k in ("ring", "stop", "answer", "refused") if k in ev)
    extra = {k: v for k, v in ev.items() if k not in ("t", kind)}
    return f"t={float(str(ev['t'])):5.2f}s  {kind:6} {ev[kind]}  " + " ".join(f"{k}={v}" for k, v in extra.items())


def main() -> int:
    stack = Stack.named("dev")
    t0 = time.monotonic()
    say("starting the dev stack (private Postgres, Asterisk 22 in the sid chroot, pbxctl serve)...")
    stack.up()
    say(f"stack up in {time.monotonic() - t0:.1f}s: {asterisk_version(stack.chroot)}, SIP on {stack.settings.sip_addr}")
    env = dict(os.environ, **stack.settings.exports())
    log_start = len(stack.serve.log_text())

    def pbxctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pbxctl", *args], capture_output=True, text=True, env=env)

    sim = pbxctl("route", "simulate", str(SCENARIO), "--json")
    say(f"playing {SCENARIO.name} live: Alice (1001) calls the Team group (2000)...")
    live = pbxctl("call", "play", str(SCENARIO), "--json")
    if live.returncode != 0 or sim.returncode != 0:
        say(f"call play failed: {(live.stderr or sim.stderr).strip()}")
        return 1
    played, predicted = json.loads(live.stdout), json.loads(sim.stdout)
    say(f"what the sipp phones saw (result: {played['result']}):")
    for ev in played["timeline"]:
        say("  " + _event(ev))
    say(f"what `pbxctl route simulate` predicts (result: {predicted['result']}):")
    for ev in predicted["timeline"]:
        say("  " + _event(ev))
    say("the controller's log of the call (pbxctl serve):")
    for line in stack.serve.log_text()[log_start:].splitlines():
        if "[call " in line:
            say("  " + line.split(" ari_app.controller INFO ", 1)[-1])
    say("the stack keeps running: `pbxctl dev status` shows it, `pbxctl dev down` stops it")
    for k, v in stack.settings.exports().items():
        print(f"export {k}={v}")
    return 0 if played["result"] == "answered" else 1


if __name__ == "__main__":
    sys.exit(main())
