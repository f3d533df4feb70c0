"""Ports one `up` hands out: found free where QEMU will bind them, and never the same one twice."""

from vmctl import ports
from vmctl.remote import PortChecks


def test_a_port_found_free_in_one_up_is_not_handed_out_twice() -> None:
    # Nothing binds it until QEMU starts: a second machine of the same `up` must get another one.
    with PortChecks() as checks:
        is_free = checks.on(None)
        port = ports.free_port(is_free=is_free)
        assert not is_free("127.0.0.1", port, "tcp")
        assert ports.free_port(is_free=is_free) != port
