/* vhd-internal.h: structures shared by the engine's source files only.
 *
 * Write order that keeps an image valid at every instant (crash safety):
 *
 *  0. What the engine may write: the footers, BAT entries, and the blocks it
 *     allocates itself (bitmap and data).  Every other byte of the file (the
 *     header, the BAT's padding, parent locator data, other writers'
 *     extensions, gaps and slack it cannot account for) is off-limits: new
 *     blocks and the moved footer go only past the end of all of it, where
 *     the trailing footer sat at open (`alloc_floor`), and the file is never
 *     cut below the end of the last of them (`cut_floor`: freed blocks
 *     that ran up to the footer at open may go).  An end before the footer
 *     in which nothing can be read (vhd_range_holds_nothing: a window a
 *     crash left) is the engine's own: both floors start where it does.  Space is reused only when it was verifiably a block
 *     of this image: a BAT entry loaded at open or allocated since, freed by
 *     zeroing or trimming.  vhd_resize alone also takes the BAT's padding
 *     for new entries, and the blocks it moved away first (see resize.c).
 *  1. Allocating a block (under vhd->lock): blocks are handed out from a
 *     window that ends at the trailing footer.  When the window is used up,
 *     the footer is written again further on (room for several blocks, more
 *     as the file grows) and made durable *before* anything overwrites the
 *     old footer, so the file ends with a durable valid footer whatever
 *     order unsynced writes reach the disk in.  One durable write per
 *     window, not per block, and not a sync of the whole file: the footer
 *     goes through a second descriptor of the image opened with O_DSYNC,
 *     which waits for that sector and the file size only, not for the data
 *     written since the last flush (vhd_io_pwrite_durable).  That write
 *     runs without vhd->lock, so that reads (which take it for their bitmap
 *     snapshots) do not wait for it: until it returned no block is handed
 *     out past the old footer (footer_moving makes such allocations wait),
 *     and the moved footer counts only then.  A failed one is latched as
 *     a failed write and sync, and allocations that waited for the move
 *     then fail on the latch.  Once the move returned, the old footer's
 *     sector is zeroed (a block may cover it: open's tail reclaim places
 *     blocks off the footer's grid).  A new block then gets
 *     a zeroed sector bitmap, and its data area reads as zeros on disk (new
 *     file space, the old footer zeroed, or a reused block punched or
 *     zeroed), so readers that
 *     ignore bitmaps see zeros in sectors never written; its BAT entry
 *     changes only in memory.  A crash leaves unreferenced space before
 *     the footer: a leak, never corruption; `vhdimg check --repair`
 *     reclaims it when it holds only zeros and stale copies of the footer
 *     (nothing else there is known to be the engine's).  A clean close
 *     gives the unused
 *     part of the window back (footer moved down, synced, file truncated).
 *     Blocks freed by zeroing are reused only after a flush has made their
 *     BAT entries durably unused, so a crash can never leave two entries
 *     pointing at one block, and only once no I/O chosen before the free
 *     can still reach them (see "Pins" below).
 *  2. Data goes to its place with pwrite; bitmap bits for the sectors written
 *     are set in memory only after the data write returned.
 *  3. vhd_flush (serialized by vhd->flush_lock): snapshot the dirty BAT
 *     sectors and bitmaps under vhd->lock, fdatasync (data, new footers and
 *     zeroed bitmaps become durable), write the snapshots, fdatasync.  So
 *     on disk a BAT entry only ever points at a block whose bitmap and
 *     footer are durable, and a bitmap bit is only set for data that is.
 *
 *  Pins: an offset read from the BAT under vhd->lock is used after the
 *     lock is dropped (pread, pwrite, punch).  Meanwhile another thread may
 *     free the block, a flush make its space reusable and an allocation
 *     give that space to another block: the late I/O would then write into,
 *     punch or read that other block.  So every such I/O pins its block
 *     (vhd->pins, taken under the lock with the offset, dropped once the
 *     I/O returned), and a block freed while pinned has its space retired
 *     rather than put on the free lists: a flush that finds its pins gone
 *     moves it on (it is zeroed when reused, since a late write may have
 *     landed after its punch).  Nothing waits for a pin, and I/O into
 *     allocated blocks takes no lock of its own: the engine's I/O never
 *     crosses blocks whatever the caller overlaps.
 *
 *  4. A failed write, sync or truncate latches the handle (io.c): every
 *     later write, punch, truncate and sync of the image is refused.  A
 *     failed sync may have dropped dirty pages the kernel will not report
 *     again, so the next sync would succeed without them: committing the
 *     bitmaps and BAT entries of step 3 after that would make missing data
 *     visible.  With nothing written after the failure, the disk keeps the
 *     metadata of the last successful flush; blocks allocated since are
 *     space nothing refers to (a leak at worst).
 *
 * Metadata is therefore synced only at flush (or FUA) time, never per write.
 */
#ifndef VHDNBD_VHD_INTERNAL_H
#define VHDNBD_VHD_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include "vhd.h"

#define VHD_FOOTER_SIZE 512
#define VHD_HEADER_SIZE 1024
#define VHD_BAT_UNUSED 0xFFFFFFFFu
#define VHD_FOOTER_COOKIE "conectix"
#define VHD_HEADER_COOKIE "cxsparse"
#define VHD_VERSION 0x00010000u
#define VHD_FEATURES_RESERVED 0x2u
#define VHD_TIMESTAMP_EPOCH 946684800 /* 2000-01-01 00:00:00 UTC */
#define VHD_MAX_LOCATOR_DATA (64 * 1024)

/* Parent locator platform codes */
#define VHD_PLAT_NONE 0
#define VHD_PLAT_WI2R 0x57693272u
#define VHD_PLAT_WI2K 0x5769326Bu
#define VHD_PLAT_W2RU 0x57327275u
#define VHD_PLAT_W2KU 0x57326B75u
#define VHD_PLAT_MAC 0x4D616320u
#define VHD_PLAT_MACX 0x4D616358u

struct vhd_footer {
  uint32_t features;
  uint32_t version;
  uint64_t data_offset;
  uint32_t timestamp;
  char creator_app[4];
  uint32_t creator_version;
  uint32_t creator_os;
  uint64_t original_size;
  uint64_t current_size;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t spt;
  uint32_t disk_type;
  uint32_t checksum;
  uint8_t uuid[16];
  uint8_t saved_state;
};

struct vhd_locator {
  uint32_t code;
  uint32_t data_space;
  uint32_t data_length;
  uint64_t data_offset;
};

struct vhd_header {
  uint64_t data_offset;
  uint64_t table_offset;
  uint32_t version;
  uint32_t max_table_entries;
  uint32_t block_size;
  uint32_t checksum;
  uint8_t parent_uuid[16];
  uint32_t parent_timestamp;
  uint8_t parent_name_raw[512]; /* UTF-16BE */
  struct vhd_locator locators[8];
};

struct vhd {
  char *path;
  int fd;
  bool readonly;
  /* Reads of fd never update the access time (O_NOATIME, or a noatime
   * mount).  Otherwise a read may wait for a journal commit to store the new
   * atime, so VHD_READ_NOWAIT gives up at once. */
  bool atime_free;
  /* vhd_read_extent handed out file ranges of this image: freed space is
   * then reused only where punching it out of the file works (bat.c). */
  atomic_bool extents_shared;
  /* The kernel refused a RWF_NOWAIT write of fd (see vhd_io_pwrite_nowait):
   * VHD_WRITE_NOWAIT gives up at once from then on. */
  atomic_bool nowait_write_unsupported;
  atomic_bool splice_in_unsupported; /* the file system took no splice (io.c) */
  /* The write-error latch (io.c): the first failed write or sync as a
   * negative errno (0: none yet), and what failed.  Set once, under
   * sync_lock, which also keeps fdatasyncs of the image one at a time. */
  atomic_int write_error;
  char write_error_what[320];
  pthread_mutex_t sync_lock;
  /* The image again, write-only with O_DSYNC, for the footer move (see
   * vhd_io_pwrite_durable): opened at the first move, under lock; -1 when
   * it could not be. */
  int dsync_fd;
  bool dsync_tried;
  bool nolock;            /* VHD_OPEN_NOLOCK: parents are opened without a lock too */
  enum vhd_size_rule size_rule; /* as opened; parents are opened with it too */
  enum vhd_type type;
  struct vhd_footer footer;
  uint8_t footer_raw[VHD_FOOTER_SIZE];
  bool footer_copy_used;
  /* The header was found torn and read from the journal of its rewrite at
   * this offset (0: it was not); an open for writing wrote it back. */
  uint64_t header_journal;
  /* A fixed disk whose footer is 511 bytes (Virtual PC before 2004 left
   * out the last reserved byte): the file ends one byte short. */
  bool footer_short;
  /* The header's parent locators whose data lay past the footer, one bit
   * each: forgotten at open (bat.c), cleared on disk by check --repair. */
  uint8_t stale_locators;
  uint64_t virtual_size;
  uint64_t file_size;     /* at open */
  /* The end of the data area as opened: where the trailing footer starts,
   * or started when the file was cut inside it and the copy at 0 stands in
   * (the sector boundary the cut left).  Every structure and block must
   * end by here. */
  uint64_t data_end;

  /* dynamic and differencing */
  struct vhd_header header;
  uint64_t header_offset;
  uint32_t max_entries;
  uint32_t block_size;
  uint32_t sectors_per_block;
  uint32_t bitmap_size;   /* bytes on disk, a multiple of 512 */
  uint32_t *bat;          /* host order */
  uint32_t allocated_blocks;
  uint8_t **bitmaps;      /* per block, loaded on first use */
  /* What every bitmap read as all ones points at, shared (NULL if it could
   * not be mapped): a fully written image keeps no bitmap of its own, which
   * for a 2 TiB image read end to end is 510 MiB.  Mapped read-only, so a
   * change that forgot vhd_bitmap_own faults instead of clearing bits of
   * every such block.  vhd_bitmap_ones_len bytes. */
  uint8_t *bitmap_ones;
  uint32_t bitmap_ra_end; /* bitmaps of blocks below this were read ahead */
  /* Xen blktap's batmap, as read at open (NULL: none); see batmap.c. */
  uint8_t *batmap;
  uint32_t batmap_len; /* bytes: its sectors */
  uint32_t batmap_version, batmap_checksum;
  uint64_t batmap_header_offset, batmap_offset;
  /* dirty tracking for flush: lists of indices plus membership flags */
  uint32_t *dirty_blocks;
  uint32_t n_dirty_blocks;
  uint8_t *block_dirty;
  uint32_t *dirty_bat_sectors;
  uint32_t n_dirty_bat_sectors;
  uint8_t *bat_sector_dirty;
  uint64_t next_block_offset; /* next block goes here */
  uint64_t footer_offset;     /* where the durable trailing footer sits */
  /* Where the trailing footer sat at open (rounded up to a sector), past the
   * end of every structure: the engine allocates only from here on and never
   * cuts the file below it. */
  uint64_t alloc_floor;
  /* The file is never cut below this at close: the end of the last thing
   * in it that is not one of the blocks running back to back up to the
   * trailing footer at open (those were verifiably this image's blocks,
   * and may go once freed), at most alloc_floor. */
  uint64_t cut_floor;
  /* Freed blocks: `pending` until a flush makes their BAT entries durably
   * unused, then `ready` for reuse (see vhd_block_allocate).  Offsets are
   * sector multiples; bit 0 set means the punch of the freed block failed,
   * so its data must be zeroed when it is reused. */
  uint64_t *free_pending, *free_ready;
  size_t n_free_pending, n_free_ready, cap_free_pending, cap_free_ready;
  /* I/O in flight per block (see "Pins" above).  Taken under `lock` with
   * the offset read from the BAT, dropped without it. */
  atomic_uint *pins;
  /* Blocks freed while pinned: their space (an entry as in free_pending)
   * waits here until the block's pins are gone. */
  struct vhd_retired {
    uint32_t blk;
    uint64_t entry;
  } *retired;
  size_t n_retired, cap_retired;

  vhd_t *parent;
  bool parent_borrowed;   /* vhd_open_opts.parent: not ours to free */
  uint64_t max_file_size; /* vhd_open_opts.max_file_size; 0: none */
  bool sparse_blocks;     /* VHD_OPEN_SPARSE_BLOCKS: new blocks' space not reserved */
  bool reserve_refused;   /* the file system refused a reservation: not tried again */
  uint64_t punch_unit;    /* vhd_io_punch's block: the file system's, at least a page */
  char parent_name[1024];

  /* A thread is moving the footer on, without the lock (see footer_move
   * in bat.c); allocations that need the room wait for footer_moved. */
  bool footer_moving;
  pthread_cond_t footer_moved;
  pthread_mutex_t lock;       /* BAT, bitmaps, allocation, footer */
  pthread_mutex_t flush_lock; /* one flush at a time */
  void (*warn)(void *, const char *);
  void *warn_opaque;
};

/* errors */
int vhd_set_err(struct vhd_err *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void vhd_warn(vhd_t *vhd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* io.c: the only code that touches image file descriptors.  Writes,
 * syncs, truncates and punches of an open image go through its vhd_t: once
 * one write, sync or truncate has failed they are all refused with -EIO
 * (see "Write errors" in vhd.h). */
int vhd_io_pread(int fd, void *buf, size_t len, uint64_t off);
/* Like vhd_io_pread but -EAGAIN instead of waiting for the disk: all of
 * [off, off+len) must be in the page cache. */
int vhd_io_pread_nowait(int fd, void *buf, size_t len, uint64_t off);
int vhd_io_pwrite(vhd_t *vhd, const void *buf, size_t len, uint64_t off);
/* All of [off, off+len) written, or -EAGAIN with nothing written when the
 * kernel would wait (pwritev2 RWF_NOWAIT), or does not do that for this
 * file, or the image is latched.  Another failure latches as vhd_io_pwrite.
 * A short RWF_NOWAIT write is finished with a waiting one. */
int vhd_io_pwrite_nowait(vhd_t *vhd, const void *buf, size_t len, uint64_t off);
/* len bytes from a pipe into the file at off (splice(2)), latching as
 * vhd_io_pwrite; -EPIPE if the pipe holds fewer. */
int vhd_io_splice_in(vhd_t *vhd, int pipe_fd, size_t len, uint64_t off);
int vhd_io_sync(vhd_t *vhd);
/* Writes [off, off+len) and returns once it is durable, without syncing
 * anything else of the file (through the O_DSYNC descriptor; pwrite and
 * fdatasync where vhd_io_dsync_open could not open one). */
int vhd_io_pwrite_durable(vhd_t *vhd, const void *buf, size_t len, uint64_t off);
/* Opens the O_DSYNC descriptor, once per handle (vhd->lock held; before the
 * first vhd_io_pwrite_durable). */
void vhd_io_dsync_open(vhd_t *vhd);
int vhd_io_truncate(vhd_t *vhd, uint64_t size);
/* Ends the file at end + 512 with the footer, written before the cut and
 * synced both sides of it.  keep_when_full: a file system with no space
 * for the footer at end (a hole) returns 1 with nothing changed. */
int vhd_io_footer_cut(vhd_t *vhd, uint64_t end, bool keep_when_full);
/* The footer copy at offset 0 of a dynamic or differencing image against
 * the trailing footer: 0 when they agree (or the copy cannot be read), 1
 * when it differs (and, with write, was rewritten and synced), or the
 * negative errno of the failed rewrite.  A crash between the two footer
 * writes of a resize or a commit leaves them apart. */
int vhd_io_footer_copy_sync(vhd_t *vhd, bool write);
/* A fixed image's footer written whole at its place and synced (a 511-byte
 * one gains its last byte); *at is where. */
int vhd_io_fixed_footer_write(vhd_t *vhd, const uint8_t raw[VHD_FOOTER_SIZE], uint64_t *at);
/* 0: all punched; 1: part zeroed in place (io.c); or a negative errno. */
int vhd_io_punch(vhd_t *vhd, uint64_t off, uint64_t len);
/* Has the file system allocate [off, off+len) (inside the file) without
 * writing it: it still reads as zeros.  A hint, as a punch is: a failure
 * does not latch, and EOPNOTSUPP stops further tries on this handle. */
int vhd_io_reserve(vhd_t *vhd, uint64_t off, uint64_t len);
/* True once a write, sync or truncate of the image failed. */
bool vhd_io_refuses_writes(const vhd_t *vhd);
uint64_t vhd_io_allocated_bytes(int fd, uint64_t off, uint64_t len);
/* Where the hole of the file at off ends, at most end: off when off holds
 * data (or the file system cannot tell), end when the hole reaches it. */
uint64_t vhd_io_hole_end(int fd, uint64_t off, uint64_t end);
/* 1 when every byte of [off, off+len) reads as zero (holes are skipped
 * without reading), apart from whole 512-byte-aligned sectors that are
 * footers of the image whose footer is `footer` (when not NULL: see
 * vhd_footer_of_image); 0 when one does not; or a negative errno. */
int vhd_io_range_is_blank(int fd, uint64_t off, uint64_t len, const uint8_t *footer);
/* 1 with *at set to the first byte of [off, off+len) that is not zero
 * (holes are skipped without reading), 0 when all are zero, or a negative
 * errno. */
int vhd_io_first_nonzero(int fd, uint64_t off, uint64_t len, uint64_t *at);
/* Makes [off, off+len) read as zeros: a hole punch, else zeros written. */
int vhd_io_zero(vhd_t *vhd, uint64_t off, uint64_t len);
/* relink.c: the relative path from directory from_dir to file to (both
 * absolute and canonical, as realpath gives them), for W2ru locators: 0, or
 * -ENAMETOOLONG when it does not fit in len bytes (a path cut short would
 * name another file). */
int vhd_relative_path(const char *from_dir, const char *to, char *out, size_t len);

/* create.c: the size a request for `size` bytes gives (rounded up to a
 * sector, then to the next CHS geometry unless exact) and the footer's
 * geometry for it; exact also sets the creator "qem2" (see README, "Virtual
 * size").  Never more than VHD_MAX_VIRTUAL_SIZE. */
uint64_t vhd_size_geometry(uint64_t size, bool exact, struct vhd_footer *f);

/* The most BAT entries create and resize give an image: QEMU refuses more
 * (INT_MAX / 4), and each takes memory for as long as the image is open
 * (4 bytes of table and more of state), so a larger BAT makes an image few
 * machines can open.  Blocks of 4 KiB reach the format's largest size. */
#define VHD_MAX_NEW_TABLE_ENTRIES (INT32_MAX / 4)

/* footer.c */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off);
void vhd_footer_decode(const uint8_t *raw, struct vhd_footer *f);
void vhd_footer_encode(const struct vhd_footer *f, uint8_t *raw); /* sets checksum */
/* Validates cookie and checksum only; returns 0 or -EINVAL with a message. */
int vhd_footer_check(const uint8_t *raw, const char *where, struct vhd_err *err);
bool vhd_footer_of_image(const uint8_t *sec, const uint8_t *footer_raw);
bool vhd_footer_uses_chs(const struct vhd_footer *f);
/* The size VHD_SIZE_AUTO serves a disk at: the geometry's where
 * vhd_footer_uses_chs says so and it fits in the current size, else the
 * current size (rounded down to a sector).  One rule for open and for the
 * tools that compare what the server reads with what other readers do. */
uint64_t vhd_footer_auto_size(const struct vhd_footer *f);

/* header.c */
void vhd_header_decode(const uint8_t *raw, struct vhd_header *h);
void vhd_header_encode(const struct vhd_header *h, uint8_t *raw); /* sets checksum */
int vhd_header_check(const uint8_t *raw, const char *path, uint64_t off, struct vhd_err *err);
/* Where parent locator entry i (0-7, 24 bytes each) starts in the header. */
#define VHD_LOCATOR_ENTRY(i) (576 + 24 * (i))
/* The header rewritten in place: read as it is on disk, changed by patch,
 * its checksum set, written and synced; vhd->header is then decoded from
 * it.  Bytes patch leaves alone (reserved ones, fields this code does not
 * use) stay as they were.  A change to both of its sectors is journaled
 * past the end of the file first (see header.c), so that a write torn
 * between them can be completed.  For an image opened for writing and not
 * being served: nothing else may write the header meanwhile. */
int vhd_header_rewrite(vhd_t *vhd, void (*patch)(uint8_t *raw, void *arg), void *arg,
                       struct vhd_err *err);
/* For a header at `off` whose check failed (`torn`, as read): the journal an
 * interrupted vhd_header_rewrite left at the end of the data area, read
 * into `journal`, when it is a valid header and one of torn's two sectors
 * is its own.  Returns the journal's offset, or 0 when there is none. */
uint64_t vhd_header_journal_find(vhd_t *vhd, uint64_t off, const uint8_t *torn,
                                 uint8_t journal[VHD_HEADER_SIZE]);
/* UTF-16 (be or le) to UTF-8; returns length written (always NUL-terminated). */
size_t vhd_utf16_to_utf8(const uint8_t *in, size_t in_len, bool big_endian, char *out,
                         size_t out_len);
/* UTF-8 to UTF-16; returns bytes written. */
size_t vhd_utf8_to_utf16(const char *in, bool big_endian, uint8_t *out, size_t out_len);
/* Whether in is well-formed UTF-8 (what the parent locators and name need). */
bool vhd_utf8_valid(const char *in);

/* bat.c */
int vhd_bat_load(vhd_t *vhd, struct vhd_err *err);

/* batmap.c: Xen's batmap, honoured and left as it is.  Load finds one
 * (after the BAT, inside [0, data_end)) and reads it; none is not an
 * error.  _full: the batmap marks block blk fully present, so it must stay
 * allocated with every bit set.  _any_full: one of the blocks of
 * [off, off+len) is so marked.  _checksum: what tapdisk computes over the
 * map for a footer current size. */
int vhd_batmap_load(vhd_t *vhd, uint64_t data_end, struct vhd_err *err);
bool vhd_batmap_full(const vhd_t *vhd, uint32_t blk);
/* Block blk was just allocated at off with bitmap bm (lock held, nothing
 * else can reach it yet): when the batmap marks it full (an image other
 * tools, or an older vhdnbd, left so), it is made full, with the parent's
 * data where this image held none, as tapdisk will read it whole. */
int vhd_batmap_fill_new(vhd_t *vhd, uint32_t blk, uint64_t off, uint8_t *bm,
                        struct vhd_err *err);
bool vhd_batmap_any_full(const vhd_t *vhd, uint64_t off, uint64_t len);
uint32_t vhd_batmap_checksum(const vhd_t *vhd, uint64_t current_size);
int vhd_bitmap_get(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err); /* lock held */
/* The same for the I/O paths: lock held, but dropped while a bitmap not yet
 * in memory is read from the file (a cold read must not stall every other
 * request of the image), and the following blocks' bitmaps are read ahead
 * when blocks are loaded in sequence.  Returns 0 with *bm set, 1 if block
 * blk is (now) unallocated, or a negative errno.  Whatever the caller
 * looked at under the lock before may have changed when a read was made. */
int vhd_bitmap_load(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err);
/* Lock held; may drop it while the footer moves (see bat.c). */
int vhd_block_allocate(vhd_t *vhd, uint32_t blk, struct vhd_err *err);
/* Records a block's space as free (lock held); reusable after the next flush.
 * entry: the block's offset, with VHD_FREE_NEEDS_ZEROING unless its bitmap
 * and data are known to read as zeros (punched). */
int vhd_block_free_space(vhd_t *vhd, uint64_t entry);
#define VHD_FREE_NEEDS_ZEROING 0x1u
/* Pins (see the write order): pin with the lock held, unpin without. */
static inline void vhd_block_pin(vhd_t *vhd, uint32_t blk) { atomic_fetch_add(&vhd->pins[blk], 1); }
static inline void vhd_block_unpin(vhd_t *vhd, uint32_t blk) {
  atomic_fetch_sub(&vhd->pins[blk], 1);
}
/* Frees block blk's space, entry as for vhd_block_free_space (lock held):
 * retired while I/O into the block is in flight, else free as usual.
 * Returns whether it was retired, or a negative errno. */
int vhd_block_release_space(vhd_t *vhd, uint32_t blk, uint64_t entry);
/* Moves retired space whose block has no pins left to the free list (lock
 * held; a flush does it before its snapshot). */
void vhd_retired_collect(vhd_t *vhd);
/* End of the bytes a parent locator's data area occupies: its data space
 * (bytes when at least the data length, else sectors, as in the reference
 * notes), never less than the data length, rounded up to a sector. */
uint64_t vhd_locator_area_end(const struct vhd_locator *l);
/* A piece of the file that is someone's (vhd_used_extents). */
struct vhd_used {
  uint64_t start, end;
  uint32_t blk;     /* the block's number, or UINT32_MAX for metadata */
  const char *what; /* what the metadata is ("the BAT"); NULL for a block */
};
#define VHD_USED_LOCATOR_ROOM 1u /* locator data with the room it reserves */
#define VHD_USED_FREED 2u        /* and blocks freed, not yet given back (lock held) */
/* The pieces of the file the image's structures account for, sorted by
 * start: the footer copy, the dynamic header, the BAT, Xen's batmap, a
 * differencing image's parent locator data (the data's own bytes, or with
 * VHD_USED_LOCATOR_ROOM the room each reserves) and every block the BAT
 * points to.  *out is malloc'ed; the count, or -ENOMEM. */
ssize_t vhd_used_extents(const vhd_t *vhd, unsigned flags, struct vhd_used **out);
/* Where the structures at the head of the file end (dynamic header, BAT,
 * Xen batmap), rounded up to a sector: the data area starts there. */
uint64_t vhd_structures_end(const vhd_t *vhd);
/* Block data starts on this file boundary in blocks placed in new space,
 * for blocks of at least VHD_ALIGN_MIN_BLOCK (see vhd_block_place). */
#define VHD_DATA_ALIGN 4096u
#define VHD_ALIGN_MIN_BLOCK (512u * 1024)
/* Where a block placed at off or after it goes: off itself, or further on
 * so that its data is VHD_DATA_ALIGN-aligned when the block size allows. */
uint64_t vhd_block_place(const vhd_t *vhd, uint64_t off);
/* 1 when nothing in [a, b) can be read through the image, whoever follows
 * its BAT: blank bytes (vhd_io_range_is_blank), and blocks laid where
 * allocation puts them from a on (vhd_block_place) whose bitmap marks no
 * sector present, which a crash leaves between a new block's first write
 * and its BAT entry.  0 when some bytes are neither, or a negative errno. */
int vhd_range_holds_nothing(vhd_t *vhd, uint64_t a, uint64_t b);
/* 1 with *len set when the bytes at off are a copy nothing refers to of one
 * of the parent locators' data (not the live one itself), or a journal a
 * header rewrite left (header.c); 0 when not, or -errno. */
int vhd_stale_copy_len(vhd_t *vhd, uint64_t off, uint64_t *len);
/* Gives back the unused end of the allocation window and the freed blocks
 * that ended the file (after a flush); the handle may go on writing. */
int vhd_window_release(vhd_t *vhd, struct vhd_err *err);

/* Where a fixed disk's footer starts: 512 bytes before the end of the file,
 * or 511 for a short footer.  A footer written there is written whole,
 * which ends the file at the standard 512. */
static inline uint64_t vhd_fixed_footer_pos(const vhd_t *vhd) {
  return vhd->file_size - (vhd->footer_short ? VHD_FOOTER_SIZE - 1 : VHD_FOOTER_SIZE);
}
/* BAT entries change under vhd->lock, as atomic stores, so that a reader
 * may look at one without the lock (vhd_bat_peek): a read of a block the
 * image does not hold goes to its parent without taking this image's lock.
 * What such a look can miss is an allocation or a free racing with it,
 * which the caller's ordering of overlapping requests makes unspecified
 * anyway (see the concurrency contract in vhd.h). */
static inline void vhd_bat_set(vhd_t *vhd, uint32_t blk, uint32_t entry) {
  __atomic_store_n(&vhd->bat[blk], entry, __ATOMIC_RELEASE);
}
static inline uint32_t vhd_bat_peek(const vhd_t *vhd, uint32_t blk) {
  return __atomic_load_n(&vhd->bat[blk], __ATOMIC_ACQUIRE);
}
void vhd_block_mark_dirty(vhd_t *vhd, uint32_t blk);
void vhd_bat_mark_dirty(vhd_t *vhd, uint32_t blk);
static inline bool vhd_bit_get(const uint8_t *bm, uint32_t s) {
  return bm[s >> 3] & (0x80u >> (s & 7));
}
/* The mapping behind vhd->bitmap_ones: the bitmap rounded up to pages. */
size_t vhd_bitmap_ones_len(const vhd_t *vhd);
/* Frees a block's bitmap, unless it is the shared all-ones one. */
static inline void vhd_bitmap_free(vhd_t *vhd, uint8_t *bm) {
  if (bm != vhd->bitmap_ones)
    free(bm);
}
/* Lock held, block blk's bitmap *bm loaded: makes it the block's own (a
 * copy of the shared all-ones one), to change bits in; *bm is updated. */
int vhd_bitmap_own(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err);
static inline void vhd_bit_set(uint8_t *bm, uint32_t s) { bm[s >> 3] |= (uint8_t)(0x80u >> (s & 7)); }
static inline void vhd_bit_clear(uint8_t *bm, uint32_t s) {
  bm[s >> 3] &= (uint8_t) ~(0x80u >> (s & 7));
}
/* Length of the run of sectors from s (exclusive end limit) with the same bit value. */
uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t s, uint32_t end, bool *value);

/* chain.c */
int vhd_parent_open(vhd_t *vhd, int depth, struct vhd_err *err);

/* open.c */
int vhd_open_depth(const char *path, const struct vhd_open_opts *opts, int depth, vhd_t **out,
                   struct vhd_err *err);
void vhd_free(vhd_t *vhd);

/* io.c, for whole files (commit, rebase, create): vhd_io_pwrite_fd,
 * vhd_io_truncate_fd, vhd_io_sync_fd, vhd_io_rename, vhd_io_unlink and
 * vhd_io_sync_dir_of, declared in vhd.h for vhdimg convert. */

/* relink.c: a parent as a differencing header names it.  rel and abs are
 * the W2ru and W2ku locator data (UTF-16LE, Windows separators for rel),
 * name_raw the header's UTF-16BE file name, name the same in UTF-8. */
struct vhd_parent_ref {
  /* UTF-16 of a path of PATH_MAX bytes, and of ".\\" before it */
  uint8_t rel[2 * (PATH_MAX + 2)], abs[2 * PATH_MAX];
  size_t rel_len, abs_len;
  uint8_t name_raw[512];
  char name[1024];
};
int vhd_parent_ref_make(const char *child_path, const char *parent_path,
                        struct vhd_parent_ref *ref, struct vhd_err *err);
/* Points the differencing child c (open read-write) at p, with p's unique
 * id, the given timestamp and new W2ru/W2ku locators: the crash-safe
 * header rewrite described in relink.c.  Flushes c first. */
int vhd_header_relink(vhd_t *c, const vhd_t *p, uint32_t parent_timestamp,
                      struct vhd_err *err);
/* lockholder.c: "process PID (COMM)" of a process holding an OFD lock on
 * fd's file into out: 1 when found, 0 when it cannot be known. */
int vhd_lock_holder(int fd, char *out, size_t len);
/* Rewrites the footer (and its copy at 0) with a new timestamp. */
int vhd_footer_set_timestamp(vhd_t *vhd, uint32_t ts, struct vhd_err *err);

#endif
