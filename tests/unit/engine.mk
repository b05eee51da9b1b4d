# Unit tests of the VHD engine (against a reference model, crash injection,
# malformed images) and of the common size helpers.
ENGINE_TEST_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
ENGINE_TEST_CFLAGS = $(AM_CFLAGS) $(UUID_CFLAGS)
ENGINE_TEST_UTIL = tests/unit/testutil.c tests/unit/testutil.h

check_PROGRAMS += test-vhd-model
TESTS += test-vhd-model
test_vhd_model_SOURCES = tests/unit/test-vhd-model.c $(ENGINE_TEST_UTIL)
test_vhd_model_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_model_CFLAGS = $(ENGINE_TEST_CFLAGS)

check_PROGRAMS += test-size
TESTS += test-size
test_size_SOURCES = tests/unit/test-size.c
test_size_LDADD = libcommon.a

check_PROGRAMS += test-log-escape
TESTS += test-log-escape
test_log_escape_SOURCES = tests/unit/test-log-escape.c tests/unit/check.h
test_log_escape_LDADD = libcommon.a

check_PROGRAMS += test-vhd-crash
TESTS += test-vhd-crash
test_vhd_crash_SOURCES = tests/unit/test-vhd-crash.c $(ENGINE_TEST_UTIL)
test_vhd_crash_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_crash_CFLAGS = $(ENGINE_TEST_CFLAGS)

check_PROGRAMS += test-vhd-open
TESTS += test-vhd-open
test_vhd_open_SOURCES = tests/unit/test-vhd-open.c $(ENGINE_TEST_UTIL)
test_vhd_open_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_open_CFLAGS = $(ENGINE_TEST_CFLAGS)

check_PROGRAMS += test-vhd-write-error
TESTS += test-vhd-write-error
test_vhd_write_error_SOURCES = tests/unit/test-vhd-write-error.c $(ENGINE_TEST_UTIL)
test_vhd_write_error_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_write_error_CFLAGS = $(ENGINE_TEST_CFLAGS)

VALGRIND_TESTS += test-vhd-model test-vhd-crash test-vhd-open test-size test-vhd-write-error test-log-escape

# - test-vhd-crash-lost: the crash workloads with unsynced writes dropped at
#   random, or torn by sectors, as a power cut may: the trailing footer
#   must survive.
# - test-vhd-open-loop: a self-parented differencing image must be refused
#   quickly.
check_PROGRAMS += test-vhd-crash-lost test-vhd-open-loop
TESTS += test-vhd-crash-lost test-vhd-open-loop
VALGRIND_TESTS += test-vhd-crash-lost test-vhd-open-loop
test_vhd_crash_lost_SOURCES = tests/unit/test-vhd-crash.c $(ENGINE_TEST_UTIL)
test_vhd_crash_lost_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_crash_lost_CFLAGS = $(ENGINE_TEST_CFLAGS) -DCRASH_LOST_WRITES
test_vhd_open_loop_SOURCES = tests/unit/test-vhd-open.c $(ENGINE_TEST_UTIL)
test_vhd_open_loop_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_open_loop_CFLAGS = $(ENGINE_TEST_CFLAGS) -DOPEN_SELF_PARENT

# - test-vhd-noatime: reads never update the atime where NOWAIT reads are
#   answered (O_NOATIME), and give up with EAGAIN where they might.
check_PROGRAMS += test-vhd-noatime
TESTS += test-vhd-noatime
test_vhd_noatime_SOURCES = tests/unit/test-vhd-noatime.c $(ENGINE_TEST_UTIL)
test_vhd_noatime_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_noatime_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-noatime

# - test-vhd-nowait-write: VHD_WRITE_NOWAIT writes only where nothing waits
#   and no metadata changes, else gives up having written nothing.
check_PROGRAMS += test-vhd-nowait-write
TESTS += test-vhd-nowait-write
test_vhd_nowait_write_SOURCES = tests/unit/test-vhd-nowait-write.c $(ENGINE_TEST_UTIL)
test_vhd_nowait_write_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_nowait_write_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-nowait-write

# - test-vhd-bitmap-shared: bitmaps read as all ones share one read-only
#   copy, and a block gets its own before any bit of it is cleared.
check_PROGRAMS += test-vhd-bitmap-shared
TESTS += test-vhd-bitmap-shared
test_vhd_bitmap_shared_SOURCES = tests/unit/test-vhd-bitmap-shared.c $(ENGINE_TEST_UTIL)
test_vhd_bitmap_shared_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_bitmap_shared_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-bitmap-shared

# - test-vhd-window-release: giving the window back with the handle open
#   leaves no freed space past the new footer to reuse.
check_PROGRAMS += test-vhd-window-release
TESTS += test-vhd-window-release
test_vhd_window_release_SOURCES = tests/unit/test-vhd-window-release.c $(ENGINE_TEST_UTIL)
test_vhd_window_release_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_window_release_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-window-release

# - test-vhd-footer-dsync: a footer move syncs the footer alone (O_DSYNC),
#   never the whole file.
check_PROGRAMS += test-vhd-footer-dsync
TESTS += test-vhd-footer-dsync
test_vhd_footer_dsync_SOURCES = tests/unit/test-vhd-footer-dsync.c $(ENGINE_TEST_UTIL)
test_vhd_footer_dsync_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_footer_dsync_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-footer-dsync

# - test-vhd-chain-read: reads, read maps and maps through three levels of
#   differencing images at every alignment, against a model.
check_PROGRAMS += test-vhd-chain-read
TESTS += test-vhd-chain-read
test_vhd_chain_read_SOURCES = tests/unit/test-vhd-chain-read.c $(ENGINE_TEST_UTIL)
test_vhd_chain_read_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_chain_read_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-chain-read

# Images of every layout the format allows, from a generator of its own: the
# engine must keep every byte it did not allocate (see the test's comment).
check_PROGRAMS += test-vhd-layout
TESTS += test-vhd-layout
VALGRIND_TESTS += test-vhd-layout
test_vhd_layout_SOURCES = tests/unit/test-vhd-layout.c $(ENGINE_TEST_UTIL)
test_vhd_layout_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_layout_CFLAGS = $(ENGINE_TEST_CFLAGS)

# - test-vhd-bitmap-bytes: one-sector writes leave the bitmap bytes the VHD
#   specification prescribes (most significant bit = first sector), read
#   from the file without the engine.
check_PROGRAMS += test-vhd-bitmap-bytes
TESTS += test-vhd-bitmap-bytes
test_vhd_bitmap_bytes_SOURCES = tests/unit/test-vhd-bitmap-bytes.c $(ENGINE_TEST_UTIL)
test_vhd_bitmap_bytes_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_bitmap_bytes_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-bitmap-bytes

# - test-vhd-align: blocks the engine places in new space have their data
#   on a 4 KiB file boundary when the block size allows, read from the file
#   without the engine; existing blocks stay where they are.
check_PROGRAMS += test-vhd-align
TESTS += test-vhd-align
test_vhd_align_SOURCES = tests/unit/test-vhd-align.c $(ENGINE_TEST_UTIL)
test_vhd_align_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_align_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-align

# - test-vhd-read-coalesce: set runs a short clear run apart are read from
#   the file in one piece, and the clear runs' file bytes (a marker planted
#   there) never reach the reader, in dynamic and differencing images.
check_PROGRAMS += test-vhd-read-coalesce
TESTS += test-vhd-read-coalesce
test_vhd_read_coalesce_SOURCES = tests/unit/test-vhd-read-coalesce.c $(ENGINE_TEST_UTIL)
test_vhd_read_coalesce_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_read_coalesce_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-read-coalesce

# - test-vhd-read-extent: the file range behind a run of data (for splicing
#   readers), and no in-place reuse of freed space once ranges were shared.
check_PROGRAMS += test-vhd-read-extent
TESTS += test-vhd-read-extent
test_vhd_read_extent_SOURCES = tests/unit/test-vhd-read-extent.c $(ENGINE_TEST_UTIL)
test_vhd_read_extent_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_read_extent_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-read-extent

# - test-vhd-bitmap-load: bitmaps read on first use without the image lock,
#   the next ones read ahead in sequence, races with loads and frees.
check_PROGRAMS += test-vhd-bitmap-load
TESTS += test-vhd-bitmap-load
test_vhd_bitmap_load_SOURCES = tests/unit/test-vhd-bitmap-load.c $(ENGINE_TEST_UTIL)
test_vhd_bitmap_load_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_bitmap_load_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-bitmap-load

# - test-vhd-write-splice: WRITE bytes from a pipe into the file in place,
#   or declined with the pipe untouched.
check_PROGRAMS += test-vhd-write-splice
TESTS += test-vhd-write-splice
test_vhd_write_splice_SOURCES = tests/unit/test-vhd-write-splice.c $(ENGINE_TEST_UTIL)
test_vhd_write_splice_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_write_splice_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-write-splice

# Overlapping requests without the server's queue: no data lands in a block
# it was not written to, whatever a freed block's space is reused for.
check_PROGRAMS += test-vhd-race
TESTS += test-vhd-race
VALGRIND_TESTS += test-vhd-race
test_vhd_race_SOURCES = tests/unit/test-vhd-race.c $(ENGINE_TEST_UTIL)
test_vhd_race_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_race_CFLAGS = $(ENGINE_TEST_CFLAGS)

# The sync of a footer move does not hold up the image's readers.
check_PROGRAMS += test-vhd-footer-sync
TESTS += test-vhd-footer-sync
VALGRIND_TESTS += test-vhd-footer-sync
test_vhd_footer_sync_SOURCES = tests/unit/test-vhd-footer-sync.c $(ENGINE_TEST_UTIL)
test_vhd_footer_sync_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_footer_sync_CFLAGS = $(ENGINE_TEST_CFLAGS)

check_PROGRAMS += test-vhd-open-opts
TESTS += test-vhd-open-opts
test_vhd_open_opts_SOURCES = tests/unit/test-vhd-open-opts.c $(ENGINE_TEST_UTIL)
test_vhd_open_opts_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_open_opts_CFLAGS = $(ENGINE_TEST_CFLAGS)
VALGRIND_TESTS += test-vhd-open-opts

# - test-vhd-resize: vhd_resize of every image type and BAT layout, with a
#   crash at every I/O point (synced writes kept, or unsynced ones lost).
check_PROGRAMS += test-vhd-resize
TESTS += test-vhd-resize
VALGRIND_TESTS += test-vhd-resize
test_vhd_resize_SOURCES = tests/unit/test-vhd-resize.c $(ENGINE_TEST_UTIL)
test_vhd_resize_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_resize_CFLAGS = $(ENGINE_TEST_CFLAGS)

# - test-vhd-compact: vhd_compact of dynamic and differencing images with
#   free and foreign gaps, with a crash at every I/O point.
check_PROGRAMS += test-vhd-compact
TESTS += test-vhd-compact
VALGRIND_TESTS += test-vhd-compact
test_vhd_compact_SOURCES = tests/unit/test-vhd-compact.c $(ENGINE_TEST_UTIL)
test_vhd_compact_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_compact_CFLAGS = $(ENGINE_TEST_CFLAGS)

# - test-vhd-commit: vhd_commit and vhd_rebase, with a crash at every I/O
#   point: the chain reads what the model says, and running them again
#   finishes the job.
check_PROGRAMS += test-vhd-commit
TESTS += test-vhd-commit
VALGRIND_TESTS += test-vhd-commit
test_vhd_commit_SOURCES = tests/unit/test-vhd-commit.c $(ENGINE_TEST_UTIL)
test_vhd_commit_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_commit_CFLAGS = $(ENGINE_TEST_CFLAGS)

check_PROGRAMS += test-vhd-reserve-blocks
TESTS += test-vhd-reserve-blocks
VALGRIND_TESTS += test-vhd-reserve-blocks
test_vhd_reserve_blocks_SOURCES = tests/unit/test-vhd-reserve-blocks.c $(ENGINE_TEST_UTIL)
test_vhd_reserve_blocks_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_reserve_blocks_CFLAGS = $(ENGINE_TEST_CFLAGS)

# - test-vhd-batmap-fill: a block Xen's batmap marks full is filled from
#   the parent when allocated; a fill the parent fails midway leaves zeros.
check_PROGRAMS += test-vhd-batmap-fill
TESTS += test-vhd-batmap-fill
test_vhd_batmap_fill_SOURCES = tests/unit/test-vhd-batmap-fill.c $(ENGINE_TEST_UTIL)
test_vhd_batmap_fill_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_batmap_fill_CFLAGS = $(ENGINE_TEST_CFLAGS)

# - test-vhd-tail-reuse: blocks placed in a blank tail before the trailing
#   footer (engine and qemu-img images) hold zeros in every absent sector.
check_PROGRAMS += test-vhd-tail-reuse
TESTS += test-vhd-tail-reuse
test_vhd_tail_reuse_SOURCES = tests/unit/test-vhd-tail-reuse.c $(ENGINE_TEST_UTIL)
test_vhd_tail_reuse_LDADD = $(ENGINE_TEST_LDADD)
test_vhd_tail_reuse_CFLAGS = $(ENGINE_TEST_CFLAGS)
