"""compose's `restart:` for host containers: a small supervisor process that outlives the vmctl command.

`up` starts `python -m vmctl.host_supervisor PLAN` in its own session for a host service whose `restart` is
not "no". The supervisor makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so the container's init,
orphaned when `runc create` exits, becomes its child: `waitpid` then gives the real exit code, which runc's
detached mode would lose. It starts the container (the same `HostRuntime.start` as without it), waits
for it to exit, and applies the policy the same way the guest's supervise.sh does (`Restart.restarts`, at
most N times for `on-failure:N`, one second apart); a restart removes the old container and its
slirp4netns and starts a fresh one from the same request, the log appended to the same file.

Files, next to the service's folder (`services/NAME`, which each restart recreates):
    NAME.plan         what to start: the OCI request, the ports, the policy, the network join (a pickle
                      of vmctl's own dataclasses, written by `up`, mode 0600)
    NAME.status.json  state (starting|running|restarting|exited|failed), exit_code, restarts, pid, start
    NAME.log          the container's output across restarts (NAME.log.t: the same with times, `logs -t`);
                      NAME.supervisor.log, the supervisor's own

`stop` ends the supervisor first (SIGTERM, by pid checked against its start time), then the container;
`vmctl stop` then leaves a status `exited` (`mark_stopped`) and nothing that would restart it.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vmctl.compose_values import Restart
from vmctl.errors import HostError, VmctlError
from vmctl.host_container import HostRuntime, PortForward, _alive, _end_process, _spawn, _start_time, reap
from vmctl.network.host import EnvNetwork
from vmctl.network.plan import Member, NetworkPlan
from vmctl.oci_spec import ContainerRequest

PR_SET_CHILD_SUBREAPER = 36
RESTART_DELAY = 1.0
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class NetworkJoin:
    """Joins a created container to the environment network (`HostRuntime.start(on_created=...)`)."""

    host: EnvNetwork
    member: Member
    plan: NetworkPlan

    def __call__(self, pid: int) -> None:
        self.host.join_container(pid, self.member, self.plan)


@dataclass(frozen=True)
class Plan:
    request: ContainerRequest
    cdir: Path
    ports: tuple[PortForward, ...]
    restart: Restart
    retries: int | None
    runc_root: Path
    join: NetworkJoin | None = None

    def dump(self) -> bytes:
        # pickle: vmctl's own frozen dataclasses, written and read only by vmctl, in its private state folder
        return pickle.dumps(self)

    @classmethod
    def load(cls, data: bytes) -> Plan:
        plan = pickle.loads(data)  # noqa: S301 - see `dump`
        if not isinstance(plan, cls):
            raise HostError("the supervisor's plan file is not a plan")
        return plan


def files(cdir: Path) -> dict[str, Path]:
    name = cdir.name
    return {k: cdir.with_name(f"{name}.{k}") for k in ("plan", "status.json", "log", "log.t", "supervisor.log")}


# ------------------------------------------------------------------------------------------------
# the CLI side


def launch(plan: Plan, timeout: float = START_TIMEOUT) -> None:
    """Start the supervisor for `plan`; return once it reports the container running (or raise)."""
    paths = files(plan.cdir)
    plan.cdir.parent.mkdir(parents=True, exist_ok=True)
    paths["status.json"].unlink(missing_ok=True)
    paths["plan"].write_bytes(plan.dump())
    paths["plan"].chmod(0o600)
    _spawn([sys.executable, "-m", "vmctl.host_supervisor", str(paths["plan"])], out=paths["supervisor.log"],
           keep={})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(plan.cdir)
        if status.get("state") == "failed":
            raise HostError(f"host container `{plan.request.name}` did not start: {status.get('error')}")
        if status.get("state") in ("running", "restarting", "exited"):
            return
        time.sleep(0.05)
    raise HostError(f"the supervisor of `{plan.request.name}` did not report within {timeout:.0f} s",
                    hint=f"see {paths['supervisor.log']}")


def read_status(cdir: Path) -> dict[str, Any]:
    try:
        data = json.loads(files(cdir)["status.json"].read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def end(cdir: Path) -> None:
    """End the supervisor (it leaves the container to the caller's `stop`) and forget its files but the log."""
    status = read_status(cdir)
    if status.get("pid"):
        _end_process(status["pid"], status.get("start"))
    for key in ("plan", "status.json", "supervisor.log"):
        files(cdir)[key].unlink(missing_ok=True)


def mark_stopped(cdir: Path) -> None:
    """`vmctl stop` ended the container: `ps` shows it exited (status.json), `start` removes the mark."""
    _write_status(cdir, state="exited", stopped=True)


def is_supervised(cdir: Path) -> bool:
    status = read_status(cdir)
    return bool(status.get("pid")) and _alive(status["pid"], status.get("start"))


# ------------------------------------------------------------------------------------------------
# the supervisor process


class _Stopped(Exception):
    pass


def become_subreaper() -> None:
    """Orphans below this process (a container's init, once `runc create` exits) become its children."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def supervise(plan: Plan) -> int:
    become_subreaper()
    signal.signal(signal.SIGTERM, _on_term)
    host = HostRuntime(plan.runc_root)
    log, stamped = files(plan.cdir)["log"], files(plan.cdir)["log.t"]
    me = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    restarts = 0
    _write_status(plan.cdir, state="starting", restarts=0, **me)
    try:
        while True:
            try:
                container = host.start(plan.request, plan.cdir, ports=plan.ports, log=log, stamped=stamped,
                                       on_created=plan.join)
            except VmctlError as e:
                _write_status(plan.cdir, state="failed", error=e.message, restarts=restarts, **me)
                return 1
            _write_status(plan.cdir, state="running", restarts=restarts, **me)
            code = wait_exit(container.pid)
            for pid in container.output_pids:  # they end with the container's output: no zombie per restart
                reap(pid, wait=2.0)
            if not plan.restart.restarts(code) or (plan.retries is not None and restarts >= plan.retries):
                _write_status(plan.cdir, state="exited", exit_code=code, restarts=restarts, **me)
                return 0
            restarts += 1
            _write_status(plan.cdir, state="restarting", exit_code=code, restarts=restarts, **me)
            host.stop(plan.request.name, plan.cdir, grace=0)
            time.sleep(RESTART_DELAY)
    except _Stopped:
        return 0


def wait_exit(pid: int) -> int:
    """The exit code of the container's init: our child, once `runc create` has exited (subreaper)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        except ChildProcessError:  # not ours after all (no subreaper): poll until it is gone
            while _alive(pid, None):
                time.sleep(0.2)
            return -1
        except InterruptedError:
            continue


def _write_status(cdir: Path, **status: Any) -> None:
    path = files(cdir)["status.json"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(path)


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


def main(argv: Sequence[str]) -> int:
    plan_file = Path(argv[1])
    try:
        plan = Plan.load(plan_file.read_bytes())
    except (OSError, pickle.UnpicklingError, VmctlError) as e:  # say so at once: `launch` is waiting
        _write_status(plan_file.with_suffix(""), state="failed", error=f"cannot read {plan_file}: {e}")
        return 1
    return supervise(plan)


if __name__ == "__main__":
    # Run the module's own copy, not `__main__`'s: the plan was pickled as `vmctl.host_supervisor.Plan`.
    from vmctl.host_supervisor import main as module_main

    sys.exit(module_main(sys.argv))
