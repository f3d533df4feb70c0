"""`vmctl run SERVICE [CMD]`: a one-off container of a service, its output on this terminal, its exit code
vmctl's, removed afterwards (compose's `run --rm`).

The one-off is the service's container made again (image, environment, volumes, user, limits: the same
request) under a name of its own, `SERVICE-run-HEX`, with compose's `run` differences: CMD replaces the
command, no published ports, no restart, no health check. It runs where the service runs, so that it
reaches what the service reaches by the same names: in the service's microVM (a second crun container of
the guest, which shares the guest's network stack like the first), or, for a host container, in the
service's network namespace (runc joins it; no NIC and no address of its own). A host service that is
not running (stopped, exited) lends the one-off its place on the environment network instead: its
NICs and addresses, while the one-off runs. So the environment must be up (the service's machine
running, for a microVM service); compose would also start the service's dependencies. Its output is
read from its log as it grows, each read from where the last ended (the same log `vmctl logs` reads),
and once its state is `exited` the rest is printed and its exit code returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import secrets
import time
from dataclasses import dataclass
from typing import BinaryIO

from vmctl import workloads
from vmctl.compose_values import Restart
from vmctl.container_image import PreparedImage, cached_image
from vmctl.errors import UsageError, VmctlError
from vmctl.oci_spec import ContainerRequest
from vmctl.spec import Environment, ServiceSpec
from vmctl.state import EnvDir, EnvState

POLL_SECONDS = 0.2  # how often the log and the state are read while it runs


@dataclass(frozen=True)
class OneOff:
    """`vmctl run`'s options as typed."""

    command: tuple[str, ...] = ()  # empty: the service's own
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()  # K=V, added to the service's
    user: str = ""  # a name from the image, or uid[:gid]
    workdir: str = ""


def one_off_spec(svc: ServiceSpec, opts: OneOff) -> ServiceSpec:
    """The service as compose's `run` makes it: what the options override, and nothing that outlives it
    (no terminal either: its output is streamed here, as with `-T`)."""
    extra = []
    for item in opts.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"`-e {item}` is not KEY=VALUE")
        extra.append((key, value))
    return dataclasses.replace(
        svc, command=opts.command or svc.command,
        entrypoint=opts.entrypoint if opts.entrypoint is not None else svc.entrypoint,
        environment=(*[(k, v) for k, v in svc.environment if k not in dict(extra)], *extra),
        user=opts.user or svc.user, working_dir=opts.workdir or svc.working_dir,
        ports=(), restart=Restart.NO, restart_retries=None, healthcheck=None, stdin_open=False, tty=False)


def run(env: Environment, envdir: EnvDir, state: EnvState, name: str, opts: OneOff, out: BinaryIO,
        image: PreparedImage | None = None) -> int:
    """Run the one-off to its end; its exit code. Removed whatever happens (Ctrl-C included). `image`:
    the service has never run, and `lifecycle.up_for_one_off` has just made its place and prepared it."""
    with workloads.Runtimes(env, envdir, state) as runtimes:
        if image is None:  # the image the service ran
            svc, rt = workloads.service_runtime(runtimes, env, name)
            image = cached_image(svc.image, env.base_dir, state.services[svc.name].get("digest"))
            if image is None:
                raise VmctlError(f"the image of `{svc.name}` is no longer in the cache", hint="`vmctl up` again")
        else:
            [svc] = workloads.select_services(env, [name])[:1]
            rt = runtimes.for_service(svc)
        one = dataclasses.replace(one_off_spec(svc, opts), name=f"{svc.name}-run-{secrets.token_hex(3)}",
                                  container_name=None)
        req = _request(svc, one, image, rt, runtimes)
        try:
            if isinstance(rt, workloads.HostServiceRuntime):
                rt.one_off(svc.name, req, one.name)
            else:  # a second container of the service's guest, running or not the service's own
                rt.start(req, one, image, ())
            return _attend(rt, one.name, out)
        finally:
            _remove(rt, one.name)


def _remove(rt: workloads.Runtime, name: str) -> None:
    """Stop and remove the one-off, also after a start that failed half-way; an error here must not hide
    the one that brought us here (`down` removes what is left: runc's table, or the guest)."""
    with contextlib.suppress(VmctlError):
        rt.stop(name, grace=0)


def _request(svc: ServiceSpec, one: ServiceSpec, image: PreparedImage, rt: workloads.Runtime,
             runtimes: workloads.Runtimes) -> ContainerRequest:
    """The service's request (its place on the network: nameservers, hosts) under the one-off's names."""
    base = workloads.container_request(dataclasses.replace(one, name=svc.name, container_name=svc.container_name),
                                       image, rt, runtimes.plan)
    cname = rt.container_name(one.name)
    return dataclasses.replace(base, name=cname, rootfs=rt.rootfs(one.name, image), etc_dir=rt.etc_dir(one.name),
                               cgroups_path=f"/vmctl/{cname}",
                               init_path=rt.init_path(one.name) if base.init_path else None)


def _attend(rt: workloads.Runtime, name: str, out: BinaryIO) -> int:
    printed = 0
    while True:
        live = rt.live(name)  # first: once it says `exited`, the log read next is complete
        printed += _print_new(rt, name, out, printed)
        if live.state in ("exited", "absent"):
            return live.exit_code if live.exit_code is not None else 1
        time.sleep(POLL_SECONDS)


def _print_new(rt: workloads.Runtime, name: str, out: BinaryIO, printed: int) -> int:
    buf = io.BytesIO()
    rt.logs(name, buf, tail=None, follow=False, since=printed)  # only what came since the last read
    new = buf.getvalue()
    out.write(new)
    out.flush()
    return len(new)

