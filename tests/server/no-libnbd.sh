#!/bin/sh
# Stands in for the protocol tests of tests/server when configure found no
# libnbd >= 1.10 to build them with: make check then reports one SKIP with
# the reason, rather than leaving them out without a word.
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
names=$(cd "$top_srcdir/tests/server" && ls test-*.c | sed 's/\.c$//' | tr '\n' ' ')
echo "SKIP: libnbd >= 1.10 not found at configure time; not built: $names" >&2
exit 77
