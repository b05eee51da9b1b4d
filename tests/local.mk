EXTRA_DIST += tests/functions.sh tests/nbdraw.py
# Builds, installs and purges the Debian package: needs root, so it runs from
# run-tests.sh rather than from "make check".
EXTRA_DIST += tests/package/test-deb-package.sh
include tests/unit/engine.mk
include tests/unit/codec.mk
include tests/unit/net.mk
include tests/unit/engine-threads.mk
include tests/server/local.mk
include tests/interop/image.mk
include tests/interop/server.mk
include tests/interop/overlay.mk
include tests/fuzz/local.mk
include tests/stress/local.mk
include tests/kernel/local.mk
# The whole directory: every planted bug and its runner.
EXTRA_DIST += tests/mutants
# Every planted bug still applies and names tests the build has (the
# mutants themselves run from run-tests.sh, a sample of them, or
# "make check-mutants").
TESTS += tests/mutants/test-mutants-apply.sh
