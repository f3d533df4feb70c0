"""Kernel command lines: one quoting function that refuses what it cannot quote, and a splitter like the kernel's."""

from __future__ import annotations

import pytest

from vmctl import cmdline
from vmctl.cmdline import CmdlineError


@pytest.mark.parametrize(("token", "quoted"), [
    ("quiet", "quiet"),
    ("a=b", "a=b"),
    ("a=b c", 'a="b c"'),
    ("a=", "a="),
    ("a=b=c d", 'a="b=c d"'),
    ("dyndbg=+p", "dyndbg=+p"),
    ("x.y-z_1=1", "x.y-z_1=1"),
])
def test_quote_karg(token: str, quoted: str) -> None:
    assert cmdline.quote_karg(token) == quoted
    assert cmdline.split(quoted) == [token]


@pytest.mark.parametrize("token", ["", "a b", 'a="b"', "a=\t", "a=\x7f", "a=é", "k€y=1", "=v", "a\nb"])
def test_quote_karg_refuses(token: str) -> None:
    with pytest.raises(CmdlineError):
        cmdline.quote_karg(token)


@pytest.mark.parametrize(("line", "tokens"), [
    ("", []),
    ("   ", []),
    ("a b  c", ["a", "b", "c"]),
    ('a="b c" d', ["a=b c", "d"]),
    ('"a b"', ["a b"]),
    ('a="" b', ["a=", "b"]),
])
def test_split(line: str, tokens: list[str]) -> None:
    assert cmdline.split(line) == tokens


def test_join_round_trips_and_limits_length() -> None:
    tokens = ["console=ttyS0", "a=b c", "quiet", "x=$(id);`id`|<>&"]
    assert cmdline.split(cmdline.join(tokens)) == tokens
    with pytest.raises(CmdlineError, match="2048"):
        cmdline.join(["x=" + "a" * 2050])
    assert len(cmdline.join(["x=" + "a" * 2046])) == 2048


@pytest.mark.parametrize("token", ["init=/x", "rdinit=/x", "console=ttyS1", "--", "vmctl.hostname=x", "vmctl.new=1"])
def test_user_tokens_refuse_reserved(token: str) -> None:
    with pytest.raises(CmdlineError, match="cannot be overridden"):
        cmdline.user_tokens([token])
    with pytest.raises(CmdlineError):
        cmdline.user_tokens(f"quiet {token}")


def test_user_tokens_forms() -> None:
    assert cmdline.user_tokens('quiet foo="a b"') == ("quiet", "foo=a b")
    assert cmdline.user_tokens(["quiet", "foo=a b"]) == ("quiet", "foo=a b")
    assert cmdline.user_tokens("") == ()
    with pytest.raises(CmdlineError, match="unbalanced"):
        cmdline.user_tokens('foo="a b')


def test_errors_are_usage_errors() -> None:
    with pytest.raises(CmdlineError) as info:
        cmdline.quote_karg('a"')
    assert info.value.exit_code == 2
