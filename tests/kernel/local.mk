# The Linux kernel's NBD client (nbd.ko under qemu) against vhdnbd, with ext4
# on top.  Boot files come from Debian packages into tests/kernel/cache/.
TESTS += tests/kernel/test-kernel-accel.sh tests/kernel/test-kernel-nbd.sh
EXTRA_DIST += \
	tests/kernel/test-kernel-nbd.sh \
	tests/kernel/test-kernel-accel.sh \
	tests/kernel/guest-run.sh \
	tests/kernel/fetch-boot-files.sh \
	tests/kernel/make-initramfs.sh \
	tests/kernel/guest-init.sh

# The boot-file cache survives make clean (it costs a 70 MB download to
# refill) but not distclean, which must leave the build tree empty.
distclean-local: distclean-kernel-cache
distclean-kernel-cache:
	rm -rf tests/kernel/cache
.PHONY: distclean-kernel-cache
