#!/bin/sh
# The example page: the container's hostname and $GREETING, as plain text.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'hostname: %s\n' "$(hostname)"
printf 'greeting: %s\n' "${GREETING:-}"
