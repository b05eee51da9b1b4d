# Unit tests of the NBD codec.
check_PROGRAMS += test-nbd-codec
TESTS += test-nbd-codec
test_nbd_codec_SOURCES = tests/unit/test-nbd-codec.c
test_nbd_codec_LDADD = libnbdcodec.a libcommon.a
