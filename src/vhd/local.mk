noinst_LIBRARIES += libvhd.a
libvhd_a_SOURCES = \
	src/vhd/vhd.h
