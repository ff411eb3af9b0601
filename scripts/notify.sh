#!/bin/sh
# Called by the CRS and CIG on every system event:
#     notify.sh UNIT EVENT
# UNIT is the service or module (crs, crs_relay, redis_high, redis_low,
# redis_backup, cig-server, cig-relay, ...), EVENT what happened (start,
# stop, down, up, reload, ...).
#
# By default the event goes to syslog.  Add your own integration below
# (an SNMP trap, a monitoring hook, ...).  Keep it quick: the server kills
# a notification that runs longer than its time limit (notify-timeout).
unit="${1:-unknown}"
event="${2:-unknown}"
if command -v logger >/dev/null 2>&1; then
    logger -t cryptify -p daemon.notice -- "$unit $event" || true
fi
# Development runs (make run) also keep a plain file of events.
if [ -n "${CRYPTIFY_EVENTS_FILE:-}" ]; then
    printf '%s %s %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$unit" "$event" >> "$CRYPTIFY_EVENTS_FILE"
fi
exit 0
