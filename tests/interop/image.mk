# Image-level interop tests: vhdimg and engine-written images against QEMU,
# libvhdi and a corpus of malformed images.
check_PROGRAMS += vhd-write-helper
vhd_write_helper_SOURCES = tests/interop/vhd-write-helper.c
vhd_write_helper_CFLAGS = $(AM_CFLAGS) $(UUID_CFLAGS)
vhd_write_helper_LDADD = libvhd.a libcommon.a $(UUID_LIBS)

TESTS += \
	tests/interop/test-vhdimg-cli.sh \
	tests/interop/test-vhdimg-convert.sh \
	tests/interop/test-vhdimg-convert-device.sh \
	tests/interop/test-vhdimg-compare.sh \
	tests/interop/test-vhdimg-qemu-compare.sh \
	tests/interop/test-vhdimg-pyvhdi.sh \
	tests/interop/test-qemu-vpc-images.sh \
	tests/interop/test-malformed-images.sh \
	tests/interop/test-vhdimg-served.sh \
	tests/interop/test-vhdimg-resize.sh \
	tests/interop/test-vhdimg-compact.sh \
	tests/interop/test-layout-bat-after-block.sh \
	tests/interop/test-vhd-crash-readers.sh \
	tests/interop/test-vhd-crash-foreign.sh \
	tests/interop/test-vhdimg-commit.sh \
	tests/interop/test-vhdimg-foreign.sh \
	tests/interop/test-vhdimg-convert-crash.sh \
	tests/interop/test-vhdimg-json.sh \
	tests/interop/test-vhdimg-small-blocks.sh \
	tests/interop/test-xen-batmap.sh \
	tests/interop/test-saved-state.sh \
	tests/interop/test-short-footer.sh \
	tests/interop/test-cut-footer.sh \
	tests/interop/test-parent-locators.sh \
	tests/interop/test-parent-symlinks.sh \
	tests/interop/test-vpc-geometry-tail.sh \
	tests/interop/test-vhdimg-warnings.sh \
	tests/interop/test-header-journal.sh
EXTRA_DIST += \
	tests/interop/crash-readers.py \
	tests/interop/tapdisk-view.py \
	tests/interop/test-xen-batmap.sh \
	tests/interop/test-saved-state.sh \
	tests/interop/test-short-footer.sh \
	tests/interop/test-cut-footer.sh \
	tests/interop/test-parent-locators.sh \
	tests/interop/test-parent-symlinks.sh \
	tests/interop/test-vpc-geometry-tail.sh \
	tests/interop/test-vhdimg-warnings.sh \
	tests/interop/test-header-journal.sh \
	tests/interop/test-vhd-crash-readers.sh \
	tests/interop/test-vhd-crash-foreign.sh \
	tests/interop/image-functions.sh \
	tests/interop/make-malformed.py \
	tests/interop/make-foreign-vhd.py \
	tests/interop/pyvhdi-dump.py \
	tests/interop/test-vhdimg-cli.sh \
	tests/interop/test-vhdimg-convert.sh \
	tests/interop/test-vhdimg-convert-device.sh \
	tests/interop/test-vhdimg-compare.sh \
	tests/interop/test-vhdimg-qemu-compare.sh \
	tests/interop/test-vhdimg-pyvhdi.sh \
	tests/interop/test-qemu-vpc-images.sh \
	tests/interop/test-malformed-images.sh \
	tests/interop/test-vhdimg-served.sh \
	tests/interop/test-vhdimg-resize.sh \
	tests/interop/test-vhdimg-compact.sh \
	tests/interop/test-layout-bat-after-block.sh \
	tests/interop/test-vhdimg-commit.sh \
	tests/interop/test-vhdimg-foreign.sh \
	tests/interop/test-vhdimg-convert-crash.sh \
	tests/interop/test-vhdimg-json.sh \
	tests/interop/test-vhdimg-small-blocks.sh
