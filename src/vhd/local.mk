noinst_LIBRARIES += libvhd.a
libvhd_a_SOURCES = \
	src/vhd/vhd.h \
	src/vhd/vhd-internal.h \
	src/vhd/io.c \
	src/vhd/footer.c \
	src/vhd/header.c \
	src/vhd/bat.c \
	src/vhd/batmap.c \
	src/vhd/chain.c \
	src/vhd/open.c \
	src/vhd/rw.h \
	src/vhd/snapshot.c \
	src/vhd/read.c \
	src/vhd/write.c \
	src/vhd/zero.c \
	src/vhd/map.c \
	src/vhd/flush.c \
	src/vhd/create.c \
	src/vhd/check.c \
	src/vhd/resize.c \
	src/vhd/compact.c \
	src/vhd/relink.c \
	src/vhd/commit.c \
	src/vhd/rebase.c \
	src/vhd/lockholder.c
libvhd_a_CFLAGS = $(AM_CFLAGS) $(UUID_CFLAGS)
