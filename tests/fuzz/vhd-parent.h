/* vhd-parent.h: the parent image that the differencing fuzz seeds refer to.
 *
 * A fuzzed image lives in a memfd opened as /proc/self/fd/N, so the engine
 * looks for a differencing disk's parent in /proc/self/fd.  The seeds name
 * their parent FUZZ_PARENT_NAME; the harness places a byte-identical parent
 * (same unique id) at that descriptor number, so the chain code is exercised
 * with a parent that is found. */
#ifndef VHDNBD_FUZZ_VHD_PARENT_H
#define VHDNBD_FUZZ_VHD_PARENT_H

#define FUZZ_PARENT_FD 900
#define FUZZ_PARENT_NAME "900"

/* Creates the parent at path (which must not exist): a 64 KiB dynamic image
 * with 4 KiB blocks, some data, and a fixed unique id.  0 or -errno. */
int fuzz_vhd_make_parent(const char *path);

/* Once per process: builds the parent and installs it at FUZZ_PARENT_FD.
 * 0 or -errno. */
int fuzz_vhd_install_parent(void);

#endif
