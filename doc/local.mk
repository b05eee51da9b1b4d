# Man pages, written by hand in man(7) roff.  tests/interop/test-man-help.sh
# keeps them in step with the programs' --help; test-install.sh checks that
# "make install" puts everything (binaries, pages, units) in place.
dist_man_MANS += doc/vhdnbd.8 doc/vhdnbd.conf.5 doc/vhdimg.1

TESTS += tests/interop/test-man-help.sh tests/interop/test-install.sh
EXTRA_DIST += tests/interop/test-man-help.sh tests/interop/test-install.sh
