#!/bin/bash
# The systemd units are valid and work: systemd-analyze verify accepts the
# generated service and the socket (with their man pages found), the service's
# Type= matches the build, the sysusers.d file creates the vhdnbd account, and
# the service's own ExecStart= command line, socket-activated the way
# vhdnbd.socket does it, serves the configured image on the socket systemd
# passed (ignoring the configuration's own port), tells the manager READY=1
# when built for Type=notify, reloads on ExecReload='s SIGHUP (telling the
# manager RELOADING=1 with MONOTONIC_USEC=, then READY=1 again) and goes on
# serving, and stops cleanly on SIGTERM.  Its ExecStartPre=
# checks the same configuration file: it passes a good one and fails (status
# 1, naming the image) a bad one.
. "$top_srcdir/tests/functions.sh"

requires systemd-analyze
requires systemd-socket-activate
requires nbdinfo

service="$top_builddir/systemd/vhdnbd.service"
socket="$top_srcdir/systemd/vhdnbd.socket"
[ -r "$service" ] || fail "$service was not generated (make all)"

unit_value() { sed -n "s/^$1=//p" "$2"; }

# --- Type= matches the build -----------------------------------------------
if grep -q '^#define HAVE_LIBSYSTEMD 1' "$top_builddir/config.h"; then
  want_type=notify
else
  want_type=simple
fi
[ "$(unit_value Type "$service")" = "$want_type" ] ||
  fail "vhdnbd.service: Type=$(unit_value Type "$service"), expected $want_type for this build"
! grep -n '@[a-zA-Z_]*@' "$service" || fail "vhdnbd.service: unsubstituted variables"

exec_start=$(unit_value ExecStart "$service")
read -r -a argv <<<"$exec_start"
[ "$(basename "${argv[0]}")" = vhdnbd ] || fail "ExecStart does not run vhdnbd: $exec_start"
[[ ${argv[0]} == /* ]] || fail "ExecStart path is not absolute: $exec_start"
conf_path=$(unit_value ConditionPathExists "$service")
[[ $conf_path == */vhdnbd/vhdnbd.conf ]] || fail "ConditionPathExists=$conf_path"
[[ " $exec_start " == *" -C $conf_path "* ]] ||
  fail "ExecStart does not read the file ConditionPathExists= waits for: $exec_start"
exec_pre=$(unit_value ExecStartPre "$service")
read -r -a pre_argv <<<"$exec_pre"
[ "${#pre_argv[@]}" -gt 0 ] && [ "${pre_argv[0]}" = "${argv[0]}" ] ||
  fail "ExecStartPre does not run the ExecStart binary: '$exec_pre'"
[[ " $exec_pre " == *" --check-config "* ]] || fail "ExecStartPre is not a --check-config: $exec_pre"
[[ " $exec_pre " == *" -C $conf_path "* ]] ||
  fail "ExecStartPre does not check the file ExecStart reads: $exec_pre"
exec_reload=$(unit_value ExecReload "$service")
[ "$exec_reload" = '/bin/kill -HUP $MAINPID' ] ||
  fail "ExecReload is not a SIGHUP to the main process: '$exec_reload'"
[ "$(unit_value ListenStream "$socket")" = 10809 ] || fail "vhdnbd.socket: not ListenStream=10809"
for setting in NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes ProtectHome=yes \
  CapabilityBoundingSet= "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" User=vhdnbd \
  MemoryDenyWriteExecute=yes SystemCallArchitectures=native; do
  grep -qx -- "$setting" "$service" || fail "vhdnbd.service: $setting is missing"
done

# The I/O threads' SCHED_BATCH (workers.c) needs sched_setscheduler, which
# @resources holds: it must be let back in after that set is taken out.
filters=$(grep -n '^SystemCallFilter=' "$service")
excl=$(echo "$filters" | grep -m1 '~.*@resources' | cut -d: -f1)
back=$(echo "$filters" | grep -E '^[0-9]+:SystemCallFilter=([^~].*)?\bsched_setscheduler\b' | cut -d: -f1 | tail -1)
[ -n "$excl" ] && [ -n "$back" ] && [ "$back" -gt "$excl" ] ||
  fail "vhdnbd.service: sched_setscheduler is not allowed after ~@resources: $filters"

# --- systemd-analyze verify ------------------------------------------------
# verify insists that ExecStart's binary exists: point a copy at the build.
mkdir -p "$TMPD/units"
sed -e "s|^ExecStart=[^ ]*|ExecStart=$VHDNBD|" -e "s|^ExecStartPre=[^ ]*|ExecStartPre=$VHDNBD|" \
  "$service" >"$TMPD/units/vhdnbd.service"
cp "$socket" "$TMPD/units/vhdnbd.socket"
rc=0
(cd "$TMPD/units" && SYSTEMD_LOG_LEVEL=notice \
  systemd-analyze verify --man=no ./vhdnbd.service ./vhdnbd.socket) >"$TMPD/verify" 2>&1 ||
  rc=$?
[ "$rc" -eq 0 ] && [ ! -s "$TMPD/verify" ] ||
  fail "systemd-analyze verify (status $rc): $(cat "$TMPD/verify")"
# Its man page check is slow (man-db): check the Documentation= pages here.
for doc in $(sed -n 's/^Documentation=//p' "$service" "$socket"); do
  [[ $doc =~ ^man:([a-z.]+)\(([0-9])\)$ ]] || fail "unexpected Documentation=$doc"
  page="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
  [ -r "$top_srcdir/doc/$page" ] || fail "Documentation=$doc: no doc/$page"
done
echo "ok: systemd-analyze verify"

# --- the sysusers.d account ------------------------------------------------
if command -v systemd-sysusers >/dev/null; then
  mkdir -p "$TMPD/sysroot/etc"
  systemd-sysusers --root="$TMPD/sysroot" "$top_srcdir/systemd/sysusers.d/vhdnbd.conf" \
    >"$TMPD/sysusers" 2>&1 || fail "systemd-sysusers: $(cat "$TMPD/sysusers")"
  grep -q '^vhdnbd:x:[0-9]*:[0-9]*:.*:/var/lib/vhdnbd:' "$TMPD/sysroot/etc/passwd" ||
    fail "sysusers.d/vhdnbd.conf did not create the vhdnbd user: $(cat "$TMPD/sysroot/etc/passwd")"
  grep -q '^vhdnbd:x:' "$TMPD/sysroot/etc/group" || fail "no vhdnbd group created"
  echo "ok: sysusers.d creates vhdnbd"
fi

# --- socket activation with the unit's own command line --------------------
free_port() {
  "$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
"$VHDIMG" create -t dynamic "$TMPD/disk.vhd" 16M
size=$("$VHDIMG" info --json "$TMPD/disk.vhd" | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
own_port=$(free_port)
cat >"$TMPD/vhdnbd.conf" <<EOF
# The server's own listening settings, to be ignored under activation.
[global]
bind = 127.0.0.1
port = $own_port

[export]
image = $TMPD/disk.vhd
description = "activated"
EOF
# The unit's command line with the test's binary and configuration.
cmd=("$VHDNBD")
for arg in "${argv[@]:1}"; do
  [ "$arg" = "$conf_path" ] && arg="$TMPD/vhdnbd.conf"
  cmd+=("$arg")
done

# ExecStartPre= on this configuration, then on a broken copy of it.
pre_cmd_with() { # pre_cmd_with CONF: ExecStartPre= for the test's binary and CONF
  pre_cmd=("$VHDNBD")
  local arg
  for arg in "${pre_argv[@]:1}"; do
    [ "$arg" = "$conf_path" ] && arg=$1
    pre_cmd+=("$arg")
  done
}
pre_cmd_with "$TMPD/vhdnbd.conf"
"${pre_cmd[@]}" >"$TMPD/pre.out" 2>"$TMPD/pre.err" ||
  fail "ExecStartPre failed on a good configuration: $(cat "$TMPD/pre.err")"
grep -qF "export \"\" (default): $TMPD/disk.vhd, dynamic," "$TMPD/pre.out" ||
  fail "ExecStartPre did not list the export: $(cat "$TMPD/pre.out")"
sed "s|^image = .*|image = $TMPD/gone.vhd|" "$TMPD/vhdnbd.conf" >"$TMPD/bad.conf"
pre_cmd_with "$TMPD/bad.conf"
rc=0
"${pre_cmd[@]}" >/dev/null 2>"$TMPD/pre.err" || rc=$?
[ "$rc" -eq 1 ] || fail "ExecStartPre on a missing image: status $rc, expected 1"
grep -q "$TMPD/gone.vhd" "$TMPD/pre.err" || fail "ExecStartPre error: $(cat "$TMPD/pre.err")"
echo "ok: ExecStartPre checks the configuration"

# A notification socket standing in for the service manager's, listening
# until the test ends (it is killed then), however slow the run.
"$PY3" - "$TMPD/notify" "$TMPD/notify.log" <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        log.write(s.recv(4096).decode() + "\n")
EOF
notify_pid=$!
cleanup_fn "kill $notify_pid 2>/dev/null"
wait_for 30 "the notification socket" test -S "$TMPD/notify"

# The port may be taken between free_port and the bind: retry a few times.
# systemd-socket-activate says when it listens (then waits for the first
# connection to start vhdnbd, as systemd does); connecting earlier is refused.
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  systemd-socket-activate -E NOTIFY_SOCKET="$TMPD/notify" -l "127.0.0.1:$port" -- "${cmd[@]}" \
    >"$TMPD/server.log" 2>&1 &
  server_pid=$!
  cleanup_fn "kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null"
  end=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$end" ]; do
    grep -q "Listening on" "$TMPD/server.log" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  grep -q "Listening on" "$TMPD/server.log" && break
  kill -0 "$server_pid" 2>/dev/null && fail "systemd-socket-activate did not listen within 60 s"
  grep -q "Address already in use" "$TMPD/server.log" ||
    fail "systemd-socket-activate failed: $(cat "$TMPD/server.log")"
done
grep -q "Listening on" "$TMPD/server.log" || fail "no free port found"

# The connection waits in the backlog until vhdnbd has opened the image and
# accepts.
timeout 60 nbdinfo --json "nbd://127.0.0.1:$port" >"$TMPD/info.json" 2>"$TMPD/nbdinfo.err" ||
  fail "nbdinfo on the activated socket failed: $(cat "$TMPD/nbdinfo.err") / $(cat "$TMPD/server.log")"
"$PY3" - "$TMPD/info.json" "$size" <<'EOF' || fail "nbdinfo saw the wrong export: $(cat "$TMPD/info.json")"
import json, sys
info = json.load(open(sys.argv[1]))
e = info["exports"][0]
assert e["export-size"] == int(sys.argv[2]), e["export-size"]
assert e.get("description") == "activated", e.get("description")
EOF
echo "ok: socket-activated ExecStart serves the configured export on port $port"

# The configuration's own address was not bound: systemd owns the socket.
if "$PY3" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)' \
  "$own_port" 2>/dev/null; then
  # Someone listens there: fail if it is vhdnbd (not some other program).
  if ! command -v ss >/dev/null || ss -Hltnp "sport = :$own_port" | grep -q "pid=$server_pid,"; then
    fail "under socket activation vhdnbd also listened on the configured port $own_port"
  fi
fi

if [ "$want_type" = notify ]; then
  wait_for 60 "Type=notify, but READY=1 from vhdnbd" grep -q '^READY=1' "$TMPD/notify.log"
  echo "ok: READY=1 sent"
fi

# ExecReload= (SIGHUP): the configuration is read again, the manager told
# RELOADING=1 then READY=1, and the export is still served.
ready_before=$(grep -c '^READY=1' "$TMPD/notify.log" || true)
kill -HUP "$server_pid"
wait_for 60 "the reload in the log" grep -q "reload: .* applied" "$TMPD/server.log"
if [ "$want_type" = notify ]; then
  wait_for 30 "RELOADING=1 on SIGHUP" grep -q '^RELOADING=1$' "$TMPD/notify.log"
  grep -qE '^MONOTONIC_USEC=[0-9]+$' "$TMPD/notify.log" ||
    fail "RELOADING=1 without MONOTONIC_USEC=: $(cat "$TMPD/notify.log")"
  ready_after() { [ "$(grep -c '^READY=1' "$TMPD/notify.log")" -gt "$ready_before" ]; }
  wait_for 30 "READY=1 after the reload" ready_after
  reloading_line=$(grep -n '^RELOADING=1$' "$TMPD/notify.log" | tail -1 | cut -d: -f1)
  ready_line=$(grep -n '^READY=1$' "$TMPD/notify.log" | tail -1 | cut -d: -f1)
  [ "$reloading_line" -lt "$ready_line" ] ||
    fail "READY=1 did not follow RELOADING=1: $(cat "$TMPD/notify.log")"
  echo "ok: RELOADING=1, MONOTONIC_USEC= and READY=1 around a reload"
fi
timeout 60 nbdinfo --json "nbd://127.0.0.1:$port" >"$TMPD/info.json" 2>"$TMPD/nbdinfo.err" ||
  fail "nbdinfo after the reload failed: $(cat "$TMPD/nbdinfo.err") / $(cat "$TMPD/server.log")"
echo "ok: ExecReload's SIGHUP reloads and vhdnbd goes on serving"

# KillSignal (SIGTERM): a clean stop, exit status 0.
kill -TERM "$server_pid"
rc=0
gone() { ! kill -0 "$server_pid" 2>/dev/null || grep -q "^State:.*zombie" "/proc/$server_pid/status"; }
wait_for 60 "vhdnbd stopping on SIGTERM" gone
wait "$server_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "vhdnbd exited with status $rc on SIGTERM: $(cat "$TMPD/server.log")"
if [ "$want_type" = notify ]; then
  # Sent before the exit, but the listener may not have logged it yet.
  wait_for 30 "STOPPING=1 on SIGTERM" grep -q '^STOPPING=1' "$TMPD/notify.log"
fi
"$VHDIMG" check "$TMPD/disk.vhd" >"$TMPD/check" || fail "image not clean after stop: $(cat "$TMPD/check")"
echo "ok: SIGTERM stops vhdnbd cleanly"
