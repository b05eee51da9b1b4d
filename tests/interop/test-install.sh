#!/bin/bash
# "make install" with a staging DESTDIR and the Debian layout (prefix=/usr,
# sysconfdir=/etc) installs the programs, the man pages, the systemd units
# (the service naming the installed binary and configuration), the sysusers.d
# account and the example configuration; the installed programs run; and
# "make uninstall" removes every file again.
. "$top_srcdir/tests/functions.sh"

requires make
[ -r "$top_builddir/Makefile" ] || fail "$top_builddir/Makefile not found"

root="$TMPD/root"
layout=(prefix=/usr sysconfdir=/etc)
# A clean make: not the jobserver or flags of the make running the tests.
run_make() {
  env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES \
    make -s -C "$top_builddir" "$@" DESTDIR="$root" "${layout[@]}" >"$TMPD/make.log" 2>&1 ||
    fail "make $1 failed: $(tail -n 30 "$TMPD/make.log")"
}
makefile_var() { sed -n "s/^$1 = //p" "$top_builddir/Makefile"; }

run_make install

expect_file() {
  [ -f "$root$1" ] || fail "make install did not install $1; installed: $(cd "$root" && find . -type f)"
}
expect_file /usr/sbin/vhdnbd
expect_file /usr/bin/vhdimg
[ -x "$root/usr/sbin/vhdnbd" ] && [ -x "$root/usr/bin/vhdimg" ] || fail "programs not executable"
expect_file /usr/share/man/man8/vhdnbd.8
expect_file /usr/share/man/man5/vhdnbd.conf.5
expect_file /usr/share/man/man1/vhdimg.1
expect_file /etc/vhdnbd/vhdnbd.conf.example
cmp -s "$root/etc/vhdnbd/vhdnbd.conf.example" "$top_srcdir/systemd/vhdnbd.conf.example" ||
  fail "installed vhdnbd.conf.example differs from the source"

# The installed programs run (the binaries are not tied to the build tree).
"$root/usr/sbin/vhdnbd" --version | grep -q '^vhdnbd ' || fail "installed vhdnbd --version"
"$root/usr/bin/vhdimg" --version | grep -q '^vhdimg ' || fail "installed vhdimg --version"

# The example configuration is valid: with its default export uncommented
# and pointed at a real image, the installed server accepts it.
"$root/usr/bin/vhdimg" create "$TMPD/disk.vhd" 4M
sed -e 's/^#\[export\]$/[export]/' \
  -e "s|^#image = /var/lib/vhdnbd/disk.vhd$|image = $TMPD/disk.vhd|" \
  "$root/etc/vhdnbd/vhdnbd.conf.example" >"$TMPD/vhdnbd.conf"
grep -q "^image = $TMPD/disk.vhd" "$TMPD/vhdnbd.conf" || fail "example has no default export to enable"
"$root/usr/sbin/vhdnbd" -C "$TMPD/vhdnbd.conf" -U "$TMPD/sock" \
  --pidfile "$TMPD/pid" >"$TMPD/server.log" 2>&1 &
pid=$!
cleanup_fn "kill $pid 2>/dev/null; wait $pid 2>/dev/null"
for ((i = 0; i < 100; i++)); do
  [ -s "$TMPD/pid" ] && break
  kill -0 "$pid" 2>/dev/null || fail "the example configuration was refused: $(cat "$TMPD/server.log")"
  sleep 0.1
done
[ -s "$TMPD/pid" ] || fail "server with the example configuration did not start"
kill -TERM "$pid"
wait "$pid" || fail "server with the example configuration did not stop cleanly"

# The units go to the configured unit directory (default PREFIX/lib/systemd/system).
unitdir=$(makefile_var systemdsystemunitdir)
if [ "$unitdir" != no ]; then
  unitdir=${unitdir//\$\{prefix\}/\/usr}
  unitdir=${unitdir//\$(prefix)/\/usr}
  expect_file "$unitdir/vhdnbd.service"
  expect_file "$unitdir/vhdnbd.socket"
  expect_file /usr/lib/sysusers.d/vhdnbd.conf
  unit="$root$unitdir/vhdnbd.service"
  grep -qx 'ExecStart=/usr/sbin/vhdnbd -C /etc/vhdnbd/vhdnbd.conf' "$unit" ||
    fail "installed unit does not run the installed paths: $(grep ExecStart "$unit")"
  grep -qx 'ExecStartPre=/usr/sbin/vhdnbd --check-config -C /etc/vhdnbd/vhdnbd.conf' "$unit" ||
    fail "installed unit does not check the installed configuration: $(grep ExecStartPre "$unit")"
  grep -qx 'ConditionPathExists=/etc/vhdnbd/vhdnbd.conf' "$unit" ||
    fail "installed unit waits for the wrong configuration file"
  ! grep -n '@[a-zA-Z_]*@' "$unit" || fail "installed unit has unsubstituted variables"
  [ "$(stat -c %a "$unit")" = 644 ] || fail "installed unit mode is $(stat -c %a "$unit")"
  if command -v systemd-analyze >/dev/null; then
    # Verified with ExecStart= and ExecStartPre= moved into the staging
    # root: the binary the installed unit names must be there.
    mkdir -p "$TMPD/units"
    sed 's|^\(ExecStart\(Pre\)\{0,1\}\)=\([^ ]*\)|\1='"$root"'\3|' "$unit" \
      >"$TMPD/units/vhdnbd.service"
    cp "$root$unitdir/vhdnbd.socket" "$TMPD/units/"
    rc=0
    (cd "$TMPD/units" && SYSTEMD_LOG_LEVEL=notice \
      systemd-analyze verify --man=no ./vhdnbd.service ./vhdnbd.socket) >"$TMPD/verify" 2>&1 ||
      rc=$?
    [ "$rc" -eq 0 ] && [ ! -s "$TMPD/verify" ] ||
      fail "systemd-analyze verify of the installed units (status $rc): $(cat "$TMPD/verify")"
  fi
  echo "ok: units installed in $unitdir"
fi

run_make uninstall
left=$(cd "$root" && find . \( -type f -o -type l \) -print)
[ -z "$left" ] || fail "make uninstall left files behind: $left"
echo "ok: make install and make uninstall"
