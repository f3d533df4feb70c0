#!/bin/sh
# The example application's page (examples/app.yaml): counts visits in redis, found by its service
# name on the environment network, and shows what the worker container has done.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'served by: %s\n' "$(hostname)"
printf 'visits: %s\n' "$(redis-cli -h "${REDIS_HOST:-cache}" incr visits)"
printf 'worker ticks: %s\n' "$(redis-cli -h "${REDIS_HOST:-cache}" get ticks)"
