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
running, for a microVM service); `lifecycle.up_for_one_off` makes that place first for a service that
never ran, as compose does.

It runs in the foreground, attached: its stdin is ours and its output comes to our stdout and stderr,
and with `tty` (a terminal on both ends, unless `-T`) it runs on a terminal that is ours passed on.
In a microVM that is `crun run` on the SSH channel itself (supervise.sh `attach`; a pty of the guest's
sshd with `tty`); on the host, runc hands the container our own descriptors (or its terminal to the
relay, which copies it to ours) and vmctl, a child subreaper for the while, waits for its exit code.
No poll and no log: its input can end (EOF) as a pipe's does, and what it writes arrives as written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from dataclasses import dataclass

from vmctl import workloads
from vmctl.compose_values import Restart
from vmctl.container_image import PreparedImage, cached_image
from vmctl.errors import UsageError, VmctlError
from vmctl.oci_spec import ContainerRequest
from vmctl.spec import Environment, ServiceSpec
from vmctl.state import EnvDir, EnvState
from vmctl.tty_relay import raw_terminal, terminal_size


@dataclass(frozen=True)
class OneOff:
    """`vmctl run`'s options as typed."""

    command: tuple[str, ...] = ()  # empty: the service's own
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()  # K=V, added to the service's
    user: str = ""  # a name from the image, or uid[:gid]
    workdir: str = ""
    tty: bool = False  # a terminal (ours, passed on), not pipes


def one_off_spec(svc: ServiceSpec, opts: OneOff) -> ServiceSpec:
    """The service as compose's `run` makes it: what the options override, and nothing that outlives it.
    Its stdin is the caller's (attached, never a pipe kept open) and it has a terminal only with `tty`."""
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
        ports=(), restart=Restart.NO, restart_retries=None, healthcheck=None, stdin_open=False, tty=opts.tty)


def run(env: Environment, envdir: EnvDir, state: EnvState, name: str, opts: OneOff,
        image: PreparedImage | None = None) -> int:
    """Run the one-off to its end on this process's stdin and output; its exit code. Removed whatever
    happens (Ctrl-C included). `image`: the service has never run, and `lifecycle.up_for_one_off` has
    just made its place and prepared it."""
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
        try:  # in a microVM: a second container of the service's guest, running or not the service's own
            with raw_terminal() if one.tty and rt.isolation == "container" else contextlib.nullcontext():
                return rt.attach(svc.name, req, one, image)
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
                               cgroups_path=f"/vmctl/{cname}", console_size=terminal_size() if one.tty else None,
                               init_path=rt.init_path(one.name) if base.init_path else None)
