check_PROGRAMS += tests/unit/test-vhd-threads
TESTS += tests/unit/test-vhd-threads
VALGRIND_TESTS += tests/unit/test-vhd-threads
tests_unit_test_vhd_threads_SOURCES = tests/unit/test-vhd-threads.c
tests_unit_test_vhd_threads_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
