check_PROGRAMS += tests/unit/test-acl
TESTS += tests/unit/test-acl
VALGRIND_TESTS += tests/unit/test-acl
tests_unit_test_acl_SOURCES = tests/unit/test-acl.c tests/unit/check.h
tests_unit_test_acl_LDADD = libnet.a $(GNUTLS_LIBS)
