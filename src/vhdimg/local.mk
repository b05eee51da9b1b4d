# vhdimg, the image tool: one file per subcommand over the engine (libvhd.a).
bin_PROGRAMS += vhdimg
vhdimg_SOURCES = \
	src/vhdimg/vhdimg.h \
	src/vhdimg/main.c \
	src/vhdimg/util.c \
	src/vhdimg/create.c \
	src/vhdimg/info.c \
	src/vhdimg/check.c \
	src/vhdimg/map.c \
	src/vhdimg/source.c \
	src/vhdimg/convert.c \
	src/vhdimg/compare.c \
	src/vhdimg/resize.c \
	src/vhdimg/compact.c \
	src/vhdimg/commit.c \
	src/vhdimg/rebase.c
vhdimg_CFLAGS = $(AM_CFLAGS) $(UUID_CFLAGS)
vhdimg_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
