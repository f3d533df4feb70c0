"""PID 1 of the nested KVM test host L1 (bench/kvmhost.py), run by the host's python3 after switch_root.

Serves one command at a time on the virtio-serial port `vmctl.l1`: a request is one JSON line
{"id", "op": "run", "argv", "env", "cwd", "timeout", "tick"} (or "op": "ping" / "poweroff"), the answer one
JSON line {"id", "returncode", "stdout", "stderr" (base64), "seconds"}. While a command runs, the agent
writes {"tick": SECONDS} every `tick` seconds: the host tells a hung L1 (no tick) from a long command in
a minute instead of at the command's timeout. Standard library only.
PID 1 forks: the parent only reaps orphans (daemons that vmctl's libvirt leaves to PID 1) so that no
wait of the server's own subprocesses ever loses an exit status to it, and powers L1 off when the
server ends.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PORT_NAME = "vmctl.l1"
RB_POWER_OFF = 0x4321FEDC
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "TERM": "dumb"}


def console(line: str) -> None:
    with open("/dev/console", "w") as out:
        out.write(line + "\n")


def find_port() -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == PORT_NAME:
            return f"/dev/{entry.name}"
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


def run(request: dict[str, Any], write: Any) -> dict[str, Any]:
    start, done = time.monotonic(), threading.Event()
    ticker = threading.Thread(target=_ticks, args=(write, float(request.get("tick") or 0), done, start), daemon=True)
    ticker.start()
    try:
        return _run(request, start)
    finally:
        done.set()
        ticker.join()  # every tick before the answer: the host reads nothing of this request after it


def _ticks(write: Any, every: float, done: threading.Event, start: float) -> None:
    while every > 0 and not done.wait(every):
        write({"tick": round(time.monotonic() - start, 1)})


def _run(request: dict[str, Any], start: float) -> dict[str, Any]:
    env = {**BASE_ENV, **request.get("env", {})}
    try:
        proc = subprocess.Popen(request["argv"], cwd=request.get("cwd") or "/", env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        return {"returncode": 127, "stdout": "", "stderr": _b64(f"agent: cannot run {request['argv'][0]}: {e}\n")}
    try:
        out, err = proc.communicate(timeout=request.get("timeout"))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command's whole session, not just its first process
        out, err = proc.communicate()
        err += f"\nagent: timed out after {request.get('timeout')} s, killed\n".encode()
        code = 124
    return {"returncode": code, "stdout": _b64(out), "stderr": _b64(err), "seconds": time.monotonic() - start}


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def serve(port: str) -> None:
    fd = os.open(port, os.O_RDWR)
    lock = threading.Lock()  # ticks come from another thread: one line at a time on the port

    def write(message: dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        with lock:
            while line:
                line = line[os.write(fd, line):]

    buf = b""
    console("VMCTL-L1-AGENT ready")
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # the host is not connected: nothing to read yet
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            request = json.loads(line)
            if request.get("op") == "poweroff":
                return
            answer = run(request, write) if request.get("op") == "run" else {}
            write({"id": request.get("id"), **answer})


def poweroff() -> None:
    os.sync()
    ctypes.CDLL(None, use_errno=True).reboot(RB_POWER_OFF)


def main() -> None:
    if os.getpid() != 1:  # by hand, for a look at the protocol: serve the named port
        serve(sys.argv[1])
        return
    server = os.fork()
    if server == 0:
        try:
            serve(find_port())
        finally:
            os._exit(0)
    while True:
        pid, _status = os.wait()
        if pid == server:
            poweroff()


if __name__ == "__main__":
    main()
