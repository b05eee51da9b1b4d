noinst_LIBRARIES += libcommon.a
libcommon_a_SOURCES = \
	src/common/endian-be.h \
	src/common/cleanup.h \
	src/common/log.c src/common/log.h \
	src/common/size.c src/common/size.h
