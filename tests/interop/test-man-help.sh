#!/bin/bash
# The man pages document exactly the options the programs accept: every
# option --help lists is in the page's OPTIONS (for vhdimg: in the section of
# its command) and every option the page documents is in --help.  Also: every
# configuration key the server parses is in vhdnbd.conf(5) and every key
# documented there is accepted; the pages render without warnings; --version
# prints the version the pages carry; an unknown option is a one-line error
# with exit status 2.
. "$top_srcdir/tests/functions.sh"

DOC="$top_srcdir/doc"

# Option words (-x, --long-name) of the option lines of a --help text: lines
# starting with blanks then '-', up to the first double blank (where the
# description starts, which may itself mention other options).
help_options() {
  sed -n 's/^[[:space:]]\{1,\}\(-.*\)$/\1/p' |
    sed 's/  .*//' |
    grep -oE '(^|[ ,|])(--[a-z][a-z0-9-]*|-[A-Za-z])' |
    sed 's/^[ ,|]//' | sort -u
}

# The roff text between ".SH $1" (or ".SS $1") and the next heading of the
# same or a higher level, from page $2.
man_section() {
  local heading=$1 page=$2
  awk -v h="$heading" '
    function level(l) { return l ~ /^\.SH/ ? 1 : (l ~ /^\.SS/ ? 2 : 0) }
    level($0) && on && level($0) <= lv { on = 0 }
    !on && level($0) {
      t = $0; sub(/^\.S[HS][[:space:]]+/, "", t); gsub(/"/, "", t)
      if (index(t, h) == 1) { on = 1; lv = level($0); next }
    }
    on { print }
  ' "$page"
}

# Option words of the tag lines (the line after each .TP) of roff text.
man_options() {
  awk 'tp { print; tp = 0 } /^\.TP/ { tp = 1 }' |
    sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' -e 's/^\.[A-Z]*[[:space:]]*//' -e 's/"/ /g' |
    grep -oE '(^|[ ,|])(--[a-z][a-z0-9-]*|-[A-Za-z])' |
    sed 's/^[ ,|]//' | sort -u
}

# compare WHAT HELP_OPTS MAN_OPTS: both lists must be equal.
compare() {
  local what=$1 help=$2 man=$3 missing
  [ -n "$help" ] || fail "$what: no options found in --help (parser out of date?)"
  missing=$(comm -23 <(echo "$help") <(echo "$man"))
  [ -z "$missing" ] || fail "$what: in --help but not documented in the man page:" $missing
  missing=$(comm -13 <(echo "$help") <(echo "$man"))
  [ -z "$missing" ] || fail "$what: documented in the man page but not in --help:" $missing
  echo "ok: $what:" $help
}

# unknown_option CMD...: exit status 2, nothing on stdout, an error naming
# the option on the first line of stderr, at most a "Try --help" hint after.
unknown_option() {
  local rc=0
  "$@" --no-such-option >"$TMPD/out" 2>"$TMPD/err" || rc=$?
  [ "$rc" -eq 2 ] || fail "$* --no-such-option: exit status $rc, expected 2"
  [ ! -s "$TMPD/out" ] || fail "$* --no-such-option: wrote to stdout"
  head -n 1 "$TMPD/err" | grep -q -- "--no-such-option" ||
    fail "$* --no-such-option: first line of stderr does not name the option: $(head -n 1 "$TMPD/err")"
  local lines
  lines=$(wc -l <"$TMPD/err")
  [ "$lines" -eq 1 ] || { [ "$lines" -eq 2 ] && sed -n 2p "$TMPD/err" | grep -q -- "--help"; } ||
    fail "$* --no-such-option: expected a one-line error (and a --help hint), got $lines lines"
}

# --- the pages render cleanly -------------------------------------------
for page in "$DOC/vhdnbd.8" "$DOC/vhdnbd.conf.5" "$DOC/vhdimg.1"; do
  if command -v groff >/dev/null; then
    out=$(groff -man -ww -z "$page" 2>&1) || fail "$page: groff failed: $out"
    [ -z "$out" ] || fail "$page: groff warnings: $out"
  else
    echo "PARTIAL: groff is not installed, $page not rendered"
  fi
  if command -v man >/dev/null; then
    out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null) ||
      fail "$page: man -l failed: $out"
    [ -z "$out" ] || fail "$page: man warnings: $out"
  fi
  if command -v lexgrog >/dev/null; then
    lexgrog "$page" >/dev/null || fail "$page: lexgrog cannot parse the NAME section"
  fi
done

# --- vhdnbd ---------------------------------------------------------------
"$VHDNBD" --help >"$TMPD/help" || fail "vhdnbd --help failed"
"$VHDNBD" -h | cmp -s - "$TMPD/help" || fail "vhdnbd -h differs from --help"
compare "vhdnbd" "$(help_options <"$TMPD/help")" \
  "$(man_section OPTIONS "$DOC/vhdnbd.8" | man_options)"

version=$("$VHDNBD" --version) || fail "vhdnbd --version failed"
[[ $version =~ ^vhdnbd\ [0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || fail "vhdnbd --version: '$version'"
[ "$("$VHDNBD" -V)" = "$version" ] || fail "vhdnbd -V differs from --version"
v=${version#vhdnbd }
for page in "$DOC/vhdnbd.8" "$DOC/vhdnbd.conf.5" "$DOC/vhdimg.1"; do
  grep -q "^\.TH .*\"vhdnbd $v\"" "$page" || fail "$page: .TH does not say version $v"
done
unknown_option "$VHDNBD"

# --- vhdimg and its commands ---------------------------------------------
"$VHDIMG" --help >"$TMPD/help" || fail "vhdimg --help failed"
[ "$("$VHDIMG" --version)" = "vhdimg $v" ] || fail "vhdimg --version is not 'vhdimg $v'"
[ "$("$VHDIMG" -V)" = "vhdimg $v" ] || fail "vhdimg -V is not 'vhdimg $v'"
unknown_option "$VHDIMG"
# The options that stand in place of a command: those the usage lines show
# are documented, and those documented work.
top_man=$(man_section OPTIONS "$DOC/vhdimg.1" | man_options)
for opt in $(sed -n 's/^ *\(Usage: \)\{0,1\}vhdimg \(-.*\)/\2/p' "$TMPD/help" |
               grep -oE '(^|[ ,|])(--[a-z][a-z0-9-]*|-[A-Za-z])' | sed 's/^[ ,|]//'); do
  echo "$top_man" | grep -qx -- "$opt" || fail "vhdimg --help shows $opt, vhdimg.1 does not"
done
for opt in $top_man; do
  out=$("$VHDIMG" "$opt") || fail "vhdimg $opt (documented in vhdimg.1) failed"
  [ "$out" = "vhdimg $v" ] || [ "$out" = "$(cat "$TMPD/help")" ] ||
    fail "vhdimg $opt prints neither the help nor the version"
done

commands=$(sed -n '/^Commands:/,/^$/s/^  \([a-z]\{1,\}\) .*/\1/p' "$TMPD/help")
[ -n "$commands" ] || fail "vhdimg --help lists no commands"
documented=$(sed -n 's/^\.SS "vhdimg \([a-z]*\).*/\1/p' "$DOC/vhdimg.1" | sort)
[ "$(echo "$commands" | sort)" = "$documented" ] ||
  fail "vhdimg commands: --help lists" $commands "but vhdimg.1 documents" $documented
for cmd in $commands; do
  "$VHDIMG" "$cmd" --help >"$TMPD/cmdhelp" || fail "vhdimg $cmd --help failed"
  "$VHDIMG" help "$cmd" | cmp -s - "$TMPD/cmdhelp" || fail "vhdimg help $cmd differs from --help"
  compare "vhdimg $cmd" "$(help_options <"$TMPD/cmdhelp")" \
    "$(man_section "vhdimg $cmd" "$DOC/vhdimg.1" | man_options)"
  unknown_option "$VHDIMG" "$cmd"
done

# --- vhdnbd.conf(5) against the parser -------------------------------------
# Keys are documented as the tags (".BI key " = VALUE"") of a key section.
conf_keys() {
  man_section "$1" "$DOC/vhdnbd.conf.5" |
    awk 'tp { print; tp = 0 } /^\.TP/ { tp = 1 }' |
    sed -e 's/\\-/-/g' -n -e 's/^\.B[IR]* *\([a-z-]*\).*/\1/p' | sort -u
}
global_keys=$(conf_keys "[global] SECTION")
export_keys=$(conf_keys "[export NAME] SECTIONS")
[ -n "$global_keys" ] && [ -n "$export_keys" ] ||
  fail "vhdnbd.conf.5: no keys found (page layout changed?)"

conf_src="$top_srcdir/src/server/config.c"
[ -r "$conf_src" ] || fail "$conf_src not found"
parsed=$(grep -oE 'strcmp\(key, "[a-z-]+"\)' "$conf_src" | sed 's/.*"\(.*\)".*/\1/' | sort -u)
[ -n "$parsed" ] || fail "no keys found in $conf_src (parser changed?)"
documented=$(printf '%s\n%s\n' "$global_keys" "$export_keys" | sort -u)
missing=$(comm -23 <(echo "$parsed") <(echo "$documented"))
[ -z "$missing" ] || fail "configuration keys parsed but not in vhdnbd.conf.5:" $missing
missing=$(comm -13 <(echo "$parsed") <(echo "$documented"))
[ -z "$missing" ] || fail "configuration keys in vhdnbd.conf.5 but not parsed:" $missing

# Each documented key is accepted in its section: the run then stops at the
# missing image (exit status 2) without a complaint about the key.
sample() {
  case $1 in
    port) echo 10809 ;; bind) echo 127.0.0.1 ;; unix) echo "$TMPD/sock" ;;
    read-only) echo yes ;;
    max-connections | max-connections-per-address | max-handshakes | handshake-timeout | \
      payload-timeout | idle-timeout | max-inflight | threads | loops | write-lanes | \
      metrics-interval) echo 5 ;;
    pidfile) echo "$TMPD/pid" ;; image) echo "$TMPD/missing.vhd" ;;
    description) echo '"some text"' ;; allow) echo 127.0.0.0/8,::1 ;;
    tls) echo require ;; tls-verify-peer | splice | sparse-blocks) echo yes ;;
    overlay) echo discard ;; overlay-key) echo address ;; overlay-dir) echo "$TMPD/ov" ;;
    overlay-max) echo 1G ;; *) echo x ;;
  esac
}
try_conf() {
  local rc=0
  "$VHDNBD" -C "$TMPD/conf" >/dev/null 2>"$TMPD/err" || rc=$?
  [ "$rc" -eq 2 ] || fail "vhdnbd -C with $1: exit status $rc, expected 2"
  if [ -n "${2:-}" ]; then
    ! grep -qiE "unknown key|invalid value" "$TMPD/err" ||
      fail "$1 is documented but refused: $(cat "$TMPD/err")"
    grep -q "missing.vhd" "$TMPD/err" || fail "$1: unexpected error: $(cat "$TMPD/err")"
  fi
}
for key in $global_keys; do
  printf '[global]\n%s = %s\n[export]\nimage = %s\n' "$key" "$(sample "$key")" \
    "$TMPD/missing.vhd" >"$TMPD/conf"
  try_conf "[global] $key = $(sample "$key")" accepted
done
for key in $export_keys; do
  printf '[export "a name"]\nimage = %s\n%s = %s\n' "$TMPD/missing.vhd" "$key" \
    "$(sample "$key")" >"$TMPD/conf"
  try_conf "[export] $key = $(sample "$key")" accepted
done
# ...and the check itself can fail: an unknown key is refused, by line.
printf '[global]\nno-such-key = 1\n' >"$TMPD/conf"
try_conf "an unknown key"
grep -q "conf:2: unknown key 'no-such-key'" "$TMPD/err" ||
  fail "an unknown key is not reported with file and line: $(cat "$TMPD/err")"
echo "ok: vhdnbd.conf.5 keys:" $documented
