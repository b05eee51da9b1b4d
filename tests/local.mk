EXTRA_DIST += tests/functions.sh
include tests/unit/engine.mk
include tests/unit/codec.mk
include tests/server/local.mk
include tests/interop/image.mk
include tests/interop/server.mk
