"""The command line: thin click commands over the core. The core never imports click."""

import sys as _sys

# paramiko imports invoke only to run ssh_config's `Match exec`, which vmctl never reads (paramiko defers the
# ImportError to that one spot). Not loading it saves ~70 ms of every command here, seconds in the nested host.
_sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
