#!/bin/bash
# Debian package round trip: builds vhdnbd_*.deb from a clean clone of the
# committed tree with dpkg-buildpackage, checks it with lintian, installs it
# with apt-get, checks what the installation did (programs, man pages, the
# conffile serving nothing, the system user, the units valid but neither
# enabled nor started), purges it and checks that no file is left behind.
#
# Usage: test-deb-package.sh [SOURCE_TOP_DIR]   (or top_srcdir in the environment)
#
# It installs and purges the vhdnbd package on this machine, so it needs root
# and is not part of "make check".  A vhdnbd package already installed whose
# configuration file is unmodified (left by an interrupted run) is purged
# first; one with a modified configuration is left alone and the test skips.
# Exit status: 0 pass, 1 fail, 77 skip (with the reason printed).
set -u

top=${1:-${top_srcdir:-}}
[ -n "$top" ] || top=$(cd "$(dirname "$0")/../.." && pwd)

skip() {
  echo "SKIP: $*"
  exit 77
}
step=setup
fail() {
  echo "FAIL: $step: $*" >&2
  exit 1
}
t0=$SECONDS
begin() {
  step=$1
  echo "--- $step (at ${SECONDS}s)"
}

[ "$(id -u)" -eq 0 ] || skip "needs root (installs and purges the vhdnbd package)"
for tool in dpkg-buildpackage dpkg-checkbuilddeps apt-get lintian git timeout; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
done
git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  skip "$top is not a git checkout"
[ -r "$top/debian/control" ] || fail "$top/debian/control not found"
unmet=$(cd "$top" && dpkg-checkbuilddeps 2>&1) ||
  skip "build dependencies missing: ${unmet#dpkg-checkbuilddeps: }"

export DEBIAN_FRONTEND=noninteractive
# Waits (bounded) for another apt or dpkg run to release its lock.
apt_get() { timeout 600 apt-get -q -o DPkg::Lock::Timeout=300 "$@"; }
pkg_status() { dpkg-query -W -f='${db:Status-Status}' vhdnbd 2>/dev/null; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vhdnbd-deb.XXXXXX")
installed_here=no
cleanup() {
  local rc=$?
  if [ "$installed_here" = yes ] && [ -n "$(pkg_status)" ] && [ "$(pkg_status)" != not-installed ]; then
    echo "cleanup: purging the vhdnbd package this run installed"
    apt_get purge -y vhdnbd >"$work/cleanup-purge.log" 2>&1 || cat "$work/cleanup-purge.log"
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- a leftover installation -----------------------------------------------
begin "purge a previous installation"
status=$(pkg_status)
if [ -n "$status" ] && [ "$status" != not-installed ]; then
  # Only a configuration the package shipped may be thrown away.
  while read -r file sum _; do
    [ -n "$file" ] || continue
    if [ -e "$file" ] && [ "$(md5sum <"$file" | cut -d' ' -f1)" != "$sum" ]; then
      skip "vhdnbd is installed and $file was modified: not purging it"
    fi
  done < <(dpkg-query -W -f='${Conffiles}\n' vhdnbd)
  echo "vhdnbd is already installed ($status), with its configuration as shipped: purging it"
  apt_get purge -y vhdnbd >"$work/purge-old.log" 2>&1 ||
    fail "apt-get purge vhdnbd: $(tail -n 20 "$work/purge-old.log")"
fi

# --- build ---------------------------------------------------------------------
begin "clone the committed tree"
git clone -q --no-hardlinks "$top" "$work/src" >"$work/clone.log" 2>&1 ||
  fail "git clone $top: $(cat "$work/clone.log")"
[ -d "$work/src/debian" ] || fail "debian/ is not committed in $top"
version=$(sed -n 's/^AC_INIT(\[vhdnbd\], *\[\([^]]*\)\].*/\1/p' "$work/src/configure.ac")
[ -n "$version" ] || fail "no version in configure.ac's AC_INIT"

begin "dpkg-buildpackage -us -uc -b"
(cd "$work/src" &&
  DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" timeout 900 dpkg-buildpackage -us -uc -b) \
  >"$work/build.log" 2>&1 || fail "package build failed: $(tail -n 40 "$work/build.log")"
debs=("$work"/vhdnbd_*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || fail "expected one vhdnbd_*.deb, found: ${debs[*]}"
deb=${debs[0]}
deb_version=$(dpkg-deb -f "$deb" Version)
[ "$deb_version" = "$version" ] ||
  fail "package version $deb_version differs from configure.ac's $version (debian/changelog)"
# A package built in a checkout must leave nothing "git status" shows.
dirt=$(git -C "$work/src" status --porcelain) || fail "git status in the build tree"
[ -z "$dirt" ] || fail "the build left files git status shows (add them to .gitignore): $dirt"

begin "lintian"
timeout 300 lintian --fail-on error "$deb" >"$work/lintian.log" 2>&1
lrc=$?
grep -v 'running with root privileges' "$work/lintian.log"
[ $lrc -eq 0 ] && ! grep -q '^E: ' "$work/lintian.log" ||
  fail "lintian reports errors (status $lrc), see above"

# --- install ---------------------------------------------------------------
# The dependencies are installed first so that the file lists before the
# install and after the purge differ only by what the package itself did.
begin "install the dependencies"
apt_get satisfy -y --no-install-recommends "$(dpkg-deb -f "$deb" Depends)" \
  >"$work/deps.log" 2>&1 || fail "apt-get satisfy: $(tail -n 20 "$work/deps.log")"

# Every file on the system where packages, their maintainer scripts and
# systemd state live.  Left out: what apt and dpkg themselves keep (their
# database, caches, logs), /usr/local (never a package's) and temporary
# directories.
system_files() {
  find /usr /etc /var /opt /srv -xdev \
    \( -path /usr/local -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache \
    -o -path /var/log -o -path /var/tmp -o -path /var/run -o -path /var/lock \) -prune \
    -o -print 2>/dev/null | LC_ALL=C sort
}
begin "list the system's files"
system_files >"$work/files.before"
user_before=no
getent passwd vhdnbd >/dev/null && user_before=yes

begin "apt-get install $(basename "$deb")"
installed_here=yes
apt_get install -y --no-install-recommends "$deb" >"$work/install.log" 2>&1 ||
  fail "apt-get install: $(tail -n 30 "$work/install.log")"
[ "$(pkg_status)" = installed ] || fail "vhdnbd is not installed after apt-get install ($(pkg_status))"

# --- what the installation did ---------------------------------------------
begin "installed programs and files"
"/usr/sbin/vhdnbd" --version >"$work/v1" 2>&1 || fail "/usr/sbin/vhdnbd --version: $(cat "$work/v1")"
grep -qx "vhdnbd $version" "$work/v1" || fail "/usr/sbin/vhdnbd --version says: $(cat "$work/v1")"
"/usr/bin/vhdimg" --version >"$work/v2" 2>&1 || fail "/usr/bin/vhdimg --version: $(cat "$work/v2")"
grep -qx "vhdimg $version" "$work/v2" || fail "/usr/bin/vhdimg --version says: $(cat "$work/v2")"
dpkg -L vhdnbd >"$work/owned"
for page in man8/vhdnbd.8 man5/vhdnbd.conf.5 man1/vhdimg.1; do
  grep -q "^/usr/share/man/$page\(\.gz\)\?$" "$work/owned" || fail "man page $page not installed"
done
grep -q '^/usr/lib/sysusers.d/vhdnbd.conf$' "$work/owned" || fail "no sysusers.d entry installed"

begin "the configuration file"
conf=/etc/vhdnbd/vhdnbd.conf
dpkg-query -W -f='${Conffiles}\n' vhdnbd | grep -q "^ $conf " ||
  fail "$conf is not a conffile: $(dpkg-query -W -f='${Conffiles}' vhdnbd)"
# As shipped it serves nothing: the server refuses to start with it.
timeout 10 /usr/sbin/vhdnbd -C "$conf" -U "$work/probe.sock" >"$work/probe.log" 2>&1
prc=$?
[ $prc -eq 2 ] && grep -q 'nothing to serve' "$work/probe.log" ||
  fail "vhdnbd -C $conf (status $prc) did not refuse an empty configuration: $(cat "$work/probe.log")"

begin "the system user"
getent passwd vhdnbd >/dev/null || fail "the vhdnbd user was not created"
getent group vhdnbd >/dev/null || fail "the vhdnbd group was not created"
if [ "$user_before" = yes ]; then
  # The account is kept from an earlier install, so its existence proves
  # little: the postinst must still create it from the sysusers.d entry.
  grep -q '^ *systemd-sysusers .*vhdnbd\.conf' /var/lib/dpkg/info/vhdnbd.postinst ||
    fail "the postinst does not run systemd-sysusers for vhdnbd.conf"
fi

begin "the units are neither enabled nor started"
unitdir=$(sed -n 's|/vhdnbd\.service$||p' "$work/owned")
[ -n "$unitdir" ] && [ -f "$unitdir/vhdnbd.socket" ] ||
  fail "vhdnbd.service and vhdnbd.socket not both installed: $(grep systemd "$work/owned")"
links=$(find /etc/systemd/system -name 'vhdnbd.*' 2>/dev/null)
[ -z "$links" ] || fail "units enabled by the installation: $links"
for unit in vhdnbd.service vhdnbd.socket; do
  state=$(systemctl is-enabled "$unit" 2>&1)
  [ "$state" = disabled ] || fail "systemctl is-enabled $unit: $state"
done
for exe in /proc/[0-9]*/exe; do
  [ "$(readlink "$exe" 2>/dev/null)" = /usr/sbin/vhdnbd ] &&
    fail "the installation started /usr/sbin/vhdnbd (${exe%/exe})"
done
if [ -d /run/systemd/system ]; then
  for unit in vhdnbd.service vhdnbd.socket; do
    ! systemctl --quiet is-active "$unit" || fail "$unit is active after the installation"
  done
fi

begin "systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "skipped: systemd-analyze is not installed"
else
  # A trivial unit shows whether verify works on this host at all.
  printf '[Service]\nExecStart=/bin/true\n' >"$work/probe.service"
  if ! SYSTEMD_LOG_LEVEL=notice timeout 60 systemd-analyze verify --man=no "$work/probe.service" \
    >"$work/verify-probe.log" 2>&1; then
    echo "skipped: systemd-analyze verify does not work on this host: $(cat "$work/verify-probe.log")"
  else
    man_check=no
    command -v man >/dev/null 2>&1 && man_check=yes
    SYSTEMD_LOG_LEVEL=notice timeout 60 systemd-analyze verify --man=$man_check \
      "$unitdir/vhdnbd.service" "$unitdir/vhdnbd.socket" >"$work/verify.log" 2>&1
    vrc=$?
    [ $vrc -eq 0 ] && [ ! -s "$work/verify.log" ] ||
      fail "systemd-analyze verify of the installed units (status $vrc): $(cat "$work/verify.log")"
  fi
fi

# --- purge -------------------------------------------------------------------
begin "apt-get purge vhdnbd"
apt_get purge -y vhdnbd >"$work/purge.log" 2>&1 || fail "apt-get purge: $(tail -n 30 "$work/purge.log")"
status=$(pkg_status)
[ -z "$status" ] || [ "$status" = not-installed ] || fail "vhdnbd is '$status' after the purge"
installed_here=no

begin "nothing left behind"
system_files >"$work/files.after"
# The one thing a purge keeps on purpose: the vhdnbd system account (Debian
# policy is not to remove users, whose files may remain on disk).  Its lines
# stay in the account databases, and systemd-sysusers may have made the
# backup copies of them below when it added the account.
account_backups='^/etc/(passwd|group|shadow|gshadow)-$'
LC_ALL=C comm -13 "$work/files.before" "$work/files.after" | grep -Ev "$account_backups" \
  >"$work/added" || true
LC_ALL=C comm -23 "$work/files.before" "$work/files.after" >"$work/removed" || true
# Files another package brought in meanwhile (a concurrent apt-get) are not
# this package's: after the purge vhdnbd owns nothing, so whatever dpkg
# attributes to a package is someone else's.
left=""
others=0
while read -r path; do
  if dpkg -S "$path" >/dev/null 2>&1; then
    others=$((others + 1))
  else
    left="$left $path"
  fi
done <"$work/added"
[ $others -eq 0 ] || echo "ignored: $others new files of other packages (installed meanwhile)"
[ -z "$left" ] || fail "files left behind after the purge:$left"
[ ! -s "$work/removed" ] || fail "files gone after install and purge that were there before: $(cat "$work/removed")"
getent passwd vhdnbd >/dev/null && echo "kept, as Debian policy asks: the vhdnbd system user"

echo "PASS: package built, checked, installed, verified and purged in $((SECONDS - t0))s"
