/* vhd.h: the VHD sector-mapping engine, the one header the rest of vhdnbd uses.
 *
 * The engine opens, validates, reads, writes, creates and checks Microsoft VHD
 * images (fixed, dynamic, differencing).  It knows nothing of sockets or event
 * loops: callers hand it byte ranges and buffers.
 *
 * Errors: every function returns 0 (or a count) on success and a negative errno
 * on failure; when a `struct vhd_err *` is passed (it may be NULL) it receives a
 * message naming the file, field or request at fault.
 *
 * Concurrency contract (one vhd_t shared by many threads):
 *   - vhd_read, vhd_read_map, vhd_map and vhd_write/vhd_write_zeroes may be
 *     called from several threads at once.  Reads and writes into already-allocated blocks
 *     run in parallel (plain pread/pwrite on the image); block allocation and
 *     every metadata update (BAT, sector bitmaps, footer) are serialized by a
 *     per-image mutex.
 *   - The caller keeps overlapping requests ordered: two writes to the same
 *     512-byte sector, or a read and a write of the same sector, running at
 *     the same time give unspecified (but never corrupting) results.  Overlap
 *     is judged on whole sectors because a write of part of a sector is a
 *     read-modify-write of the whole sector.  "Never corrupting" holds
 *     without the caller's help: a block trimmed or zeroed away while a
 *     read, write or zeroing of it is still running does not have its
 *     space reused until that request is done, so no request ever reads or
 *     changes another block's data, and the image stays valid.
 *   - vhd_flush makes durable every write that completed before vhd_flush was
 *     called; writes still running when it starts may or may not be covered.
 *   - vhd_close must not race with anything else on the handle.
 *
 * Crash safety (see vhd-internal.h for the write order): whatever instant the
 * process dies or the power fails, the image reopens as a valid VHD that holds
 * every write completed before the last successful vhd_flush (or written with
 * VHD_FUA).
 *
 * Write errors: when a write, sync or truncate of an image fails (EIO,
 * ENOSPC, EDQUOT...), data the kernel had already accepted may be lost with
 * it: Linux reports a failed write-back to one fdatasync and forgets it, so
 * a later sync would succeed without that data ever reaching the disk.  The
 * handle therefore latches the first failure: the call that met it returns
 * its errno, and from then on every vhd_flush, every vhd_write (with or
 * without VHD_FUA), vhd_write_zeroes and vhd_trim fails with EIO and
 * nothing more is written to the file, so no BAT entry or sector bitmap is
 * committed for data that may be missing: on disk the image stays as the
 * last successful flush left it, plus space nothing refers to.  Plain writes
 * are refused too: none of them could ever be made durable, and a client
 * told so at once stops sooner.  Reads go on.  Only closing and reopening
 * the image (after fixing the disk) makes it writable again; vhd_close on a
 * latched handle returns EIO.  vhd_write_error tells what failed.
 */
#ifndef VHDNBD_VHD_H
#define VHDNBD_VHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#define VHD_SECTOR_SIZE 512u
#define VHD_DEFAULT_BLOCK_SIZE (2u * 1024 * 1024)
#define VHD_MIN_BLOCK_SIZE 512u
#define VHD_MAX_BLOCK_SIZE (256u * 1024 * 1024)
/* 0xff000000 sectors: the largest size QEMU accepts, just under 2040 GiB. */
#define VHD_MAX_VIRTUAL_SIZE (UINT64_C(0xff000000) * 512)
/* Differencing chains deeper than this are refused (loops, hostile images). */
#define VHD_MAX_CHAIN_DEPTH 32

typedef struct vhd vhd_t;

struct vhd_err {
  char msg[1024];
};

enum vhd_type {
  VHD_TYPE_FIXED = 2,
  VHD_TYPE_DYNAMIC = 3,
  VHD_TYPE_DIFFERENCING = 4,
};

/* How the virtual size is chosen (see doc/ and vhd_open):
 * AUTO: the footer's current size, except for images whose creator is
 *       "vpc " or "vs  " and whose geometry is not the 65535/16/255 maximum:
 *       those expose cylinders*heads*sectors*512, as Virtual PC did. */
enum vhd_size_rule {
  VHD_SIZE_AUTO = 0,
  VHD_SIZE_CURRENT,
  VHD_SIZE_CHS,
};

/* vhd_open flags */
#define VHD_OPEN_RDONLY 0x1u
/* Skip the OFD lock on the image and its parents, to look at an image
 * another process serves (vhdimg info, vhdnbd --check-config, tests). */
#define VHD_OPEN_NOLOCK 0x2u
#define VHD_OPEN_NOPARENT 0x4u /* differencing: do not open the parent (info/check) */
/* Leave the data area of each new block a hole where it is not written,
 * rather than reserve its space when the block is allocated (see
 * vhd_block_allocate in bat.c): less disk used by blocks written in part,
 * slower small writes into new blocks. */
#define VHD_OPEN_SPARSE_BLOCKS 0x8u

struct vhd_open_opts {
  unsigned flags;
  enum vhd_size_rule size_rule;
  /* Called for non-fatal findings (footer copy used, timestamp mismatch...);
   * may be NULL, then warnings go nowhere. */
  void (*warn)(void *opaque, const char *msg);
  void *warn_opaque;
  /* Differencing: use this open image as the parent instead of searching
   * for it (it must carry the child's parent unique id).  It stays the
   * caller's: vhd_close leaves it open, and the caller closes it only after
   * every child using it.  Several children may share one, since reads of
   * an image may run from several threads at once.  NULL: search. */
  vhd_t *parent;
  /* A ceiling on the image file's size in bytes (0: none): an allocation
   * that would take the file past it fails with ENOSPC, before anything is
   * written, and leaves the handle writable (not a latched write error). */
  uint64_t max_file_size;
};

int vhd_open(const char *path, const struct vhd_open_opts *opts, vhd_t **out,
             struct vhd_err *err);
/* Flushes (when writable) and closes, parents included.  Returns the flush error. */
int vhd_close(vhd_t *vhd, struct vhd_err *err);

/* For a command about to replace the file at `path` (a rename over it):
 * takes a read lock on fd, open on that file (a write lock when fd is
 * open for writing only), which holds while fd stays open, so that no
 * server opens it for writing meanwhile.  Refused with
 * -EBUSY, naming the holder, while any other open file holds a lock on it
 * (an image served, or read as a parent): its server would go on with the
 * old, unlinked file, and what it acknowledged would be lost. */
int vhd_lock_replaced(int fd, const char *path, struct vhd_err *err);
/* Whether the lock an open of `path` would take (a write lock for a
 * writable image, else a read lock) would be granted now: 0, or -EBUSY
 * naming the holder, who may be this very process through another open
 * file.  Nothing is held afterwards. */
int vhd_lock_test(const char *path, bool write, struct vhd_err *err);
/* How many fcntl(2) locks, of open files in any process (this one too),
 * hold the file st describes: readers and writers, each byte-range lock
 * counted apart.  -errno when the kernel's list cannot be read. */
int vhd_lock_census(const struct stat *st, unsigned *readers, unsigned *writers);

uint64_t vhd_virtual_size(const vhd_t *vhd);
enum vhd_type vhd_get_type(const vhd_t *vhd);
bool vhd_is_readonly(const vhd_t *vhd);
const char *vhd_path(const vhd_t *vhd);
/* fstat(2) of the image file as opened: 0 or a negative errno. */
int vhd_file_stat(const vhd_t *vhd, struct stat *st);
/* Parent of a differencing disk (NULL otherwise, or with VHD_OPEN_NOPARENT). */
vhd_t *vhd_parent(const vhd_t *vhd);

struct vhd_info {
  enum vhd_type type;
  uint64_t virtual_size;   /* what the engine serves */
  uint64_t current_size;   /* footer field */
  uint64_t original_size;  /* footer field */
  uint64_t chs_size;       /* cylinders*heads*sectors*512 */
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors_per_track;
  char creator_app[5];     /* NUL-terminated, may hold NULs inside ("d2v\0") */
  uint32_t creator_version;
  uint32_t creator_os;
  uint32_t features;
  uint32_t timestamp;      /* seconds since 2000-01-01 UTC */
  uint8_t uuid[16];
  bool saved_state;
  bool footer_copy_used;   /* trailing footer damaged, copy at 0 used */
  /* dynamic and differencing only */
  uint64_t header_offset;
  uint64_t bat_offset;
  uint32_t max_table_entries;
  uint32_t block_size;
  uint32_t allocated_blocks;
  /* a Xen blktap batmap after the BAT (never written: see vhdnbd(8)) */
  bool xen_batmap;
  uint64_t batmap_offset;       /* of its bits */
  uint32_t batmap_full_blocks;  /* blocks (of the table's) it marks full */
  bool batmap_checksum_ok;      /* as tapdisk computes it */
  /* differencing only */
  uint8_t parent_uuid[16];
  uint32_t parent_timestamp;
  char parent_name[1024];  /* the header's unicode name, as UTF-8 */
  uint64_t file_size;
};

void vhd_get_info(const vhd_t *vhd, struct vhd_info *info);

/* Reads len bytes at byte offset off.  Range must lie inside the virtual size. */
int vhd_read(vhd_t *vhd, void *buf, uint64_t off, size_t len, struct vhd_err *err);

/* write flags */
#define VHD_FUA 0x1u        /* durable before returning */
#define VHD_MAY_TRIM 0x2u   /* write_zeroes: whole blocks may be deallocated */
#define VHD_NO_HOLE 0x4u    /* write_zeroes: the range must end up allocated */
/* vhd_write: never wait and change no metadata, or give up.  The write
 * returns -EAGAIN, having written nothing, wherever it could wait or would
 * have to change the image's metadata: the image lock is contended, a
 * block is not allocated, its bitmap is not in memory or does not have
 * every sector the write touches set, the write spans more than
 * VHD_WRITE_NOWAIT_MAX_BLOCKS blocks, VHD_FUA is asked for, a write error
 * is latched, or the kernel would wait for the data write (pwritev2
 * RWF_NOWAIT) or does not offer that for the file.  Otherwise the whole
 * range is written, as without the flag (a fixed image needs no metadata).
 * The caller then does the same write without the flag, on a thread that
 * may wait.  Another failure is reported as without the flag. */
#define VHD_WRITE_NOWAIT 0x8u
#define VHD_WRITE_NOWAIT_MAX_BLOCKS 16

int vhd_write(vhd_t *vhd, const void *buf, uint64_t off, size_t len, unsigned flags,
              struct vhd_err *err);
/* vhd_write with the first head_len bytes taken from head and the rest from
 * the pipe pipe_fd (which holds at least that many), moved into the file
 * by splice(2), no copy through the caller.  Any range of whole 512-byte
 * sectors is taken (blocks allocated and bits set as by vhd_write); a
 * range that starts or ends inside a sector only where that needs no
 * read-modify-write and no metadata change: a fixed image, or blocks
 * already allocated with every sector touched already marked (at most
 * VHD_WRITE_NOWAIT_MAX_BLOCKS blocks).  Returns 0 when the bytes are
 * written (durable too with VHD_FUA), 1 when the range is not like that or
 * the image's file system takes no splice (the pipe untouched: the caller
 * reads it and calls vhd_write), or a
 * negative errno as vhd_write, after which the pipe may still hold part of
 * the bytes.  A bitmap not yet in memory is read, so it may wait. */
int vhd_write_splice(vhd_t *vhd, const void *head, size_t head_len, int pipe_fd, uint64_t off,
                     size_t len, unsigned flags, struct vhd_err *err);
/* Makes [off, off+len) read as zeros.  On a dynamic disk unallocated blocks stay
 * unallocated, sectors of allocated blocks get their bitmap bits cleared, and
 * with VHD_MAY_TRIM whole blocks lose their BAT entry.  On a differencing disk
 * zeros are written (they must hide the parent).  With VHD_NO_HOLE zeros are
 * written and allocated everywhere. */
int vhd_write_zeroes(vhd_t *vhd, uint64_t off, uint64_t len, unsigned flags,
                     struct vhd_err *err);
/* A hint: zeroes whole sectors inside [off, off+len) the cheap way (no data
 * written) where the image can; the range's content is undefined afterwards. */
int vhd_trim(vhd_t *vhd, uint64_t off, uint64_t len, unsigned flags, struct vhd_err *err);
/* Durably stores every write completed before the call.  EIO after a write
 * error (see above). */
int vhd_flush(vhd_t *vhd, struct vhd_err *err);
/* The first write, sync or truncate of this handle that failed, as a
 * negative errno, with err->msg naming the image, what failed and why; 0
 * while none has (see "Write errors" above). */
int vhd_write_error(const vhd_t *vhd, struct vhd_err *err);

/* True when write_zeroes over [off,off+len) needs no data writes (FAST_ZERO):
 * not where part of a sector holding data must keep its other bytes. */
bool vhd_zero_is_fast(vhd_t *vhd, uint64_t off, uint64_t len);

/* Mapping of a virtual range, in runs.  depth is the chain level that holds the
 * data (0 = this image, 1 = its parent...), or -1 when no level does (reads as
 * zeros).  file_offset is the byte offset in that level's file (0 when depth = -1). */
enum vhd_map_flags {
  VHD_MAP_DATA = 0x1,      /* some level holds these sectors */
  VHD_MAP_ZERO = 0x2,      /* reads as zeros (unallocated everywhere) */
};
struct vhd_extent {
  uint64_t offset;
  uint64_t length;
  unsigned flags;
  int depth;
  uint64_t file_offset;
};
/* Calls cb for consecutive runs covering [off, off+len); runs with equal flags,
 * depth and contiguous file offsets are merged.  cb returns 0 to go on,
 * non-zero to stop (vhd_map then returns that value).  cb must not be NULL
 * (NULL is reserved for the engine's own "is it all zeros" probe). */
typedef int (*vhd_map_cb)(void *opaque, const struct vhd_extent *ext);
int vhd_map(vhd_t *vhd, uint64_t off, uint64_t len, vhd_map_cb cb, void *opaque,
            struct vhd_err *err);

/* For a reader that moves file bytes itself rather than copying them
 * (splice(2) from the page cache into a socket): the file and offset that
 * hold all of [off, off+len) as one run of data.  Returns 1 with *fd (the
 * image's or a parent's descriptor, owned by the image) and *file_off; 0
 * when the range is not one run of one file's data (holes, runs in several
 * levels or places); or a negative errno.  The bytes stay this range's
 * until a later write or trim of it (the caller orders those after its
 * use, as for a read).  Such a reader holds references to the page cache,
 * not copies, for as long as the bytes are in flight: so from the first
 * call on, space this image frees is given to another block only where
 * the file system punches it out first (which leaves the pages held
 * elsewhere as they were); without hole punching it stays unused, for
 * vhdimg compact to give back. */
int vhd_read_extent(vhd_t *vhd, uint64_t off, size_t len, int *fd, uint64_t *file_off,
                    struct vhd_err *err);

/* vhd_read and vhd_map in one pass (one look at each block's BAT entry and
 * bitmap): reads [off, off+len) into buf and, when cb is not NULL, calls it
 * for consecutive runs covering the range, flagged VHD_MAP_DATA (some level
 * holds the bytes) or VHD_MAP_ZERO (no level does); runs with equal flags are
 * merged, depth and file_offset are not reported (0).
 * flags:
 *   VHD_READ_SKIP_ZERO  buf may be left untouched where a VHD_MAP_ZERO run lies
 *                       (the caller zero-fills what it needs): large runs are,
 *                       short ones between data may be zeroed; requires cb.
 *   VHD_READ_NOWAIT     never wait: for a contended image lock, a bitmap not
 *                       yet in memory or file data not in the page cache
 *                       (preadv2 RWF_NOWAIT), or an image whose reads may
 *                       update its access time (opened without O_NOATIME,
 *                       which needs ownership or CAP_FOWNER, on a mount
 *                       without noatime), return -EAGAIN at once, leaving
 *                       buf and the runs already reported unspecified.  Lets
 *                       an event loop serve cached reads without a thread.
 * A cb returning non-zero stops the read and is returned. */
#define VHD_READ_SKIP_ZERO 0x1u
#define VHD_READ_NOWAIT 0x2u
int vhd_read_map(vhd_t *vhd, void *buf, uint64_t off, size_t len, unsigned flags,
                 vhd_map_cb cb, void *opaque, struct vhd_err *err);

/* Creation. */
struct vhd_create_opts {
  enum vhd_type type;
  uint64_t size;            /* ignored for differencing (taken from the parent) */
  uint32_t block_size;      /* 0 = 2 MiB */
  bool exact_size;          /* keep size exactly (creator "qem2"-style); else CHS-rounded up */
  const char *parent;       /* differencing: path of the parent */
  /* Permission bits of the new file (before the umask); 0: 0644.  A
   * child holding one client's data is made 0600. */
  unsigned mode;
};
int vhd_create(const char *path, const struct vhd_create_opts *opts, struct vhd_err *err);

/* Geometry of the spec for a size in bytes; returns cylinders*heads*spt*512. */
uint64_t vhd_geometry_for_size(uint64_t size, uint16_t *cyls, uint8_t *heads, uint8_t *spt);

/* Consistency check.  Problems are reported through cb, one line each.
 * Returns the VHD_CHECK_* bits found (0 = clean) or a negative errno when the
 * image could not be examined at all. */
#define VHD_CHECK_CORRUPT 0x1   /* errors that make data unreliable */
#define VHD_CHECK_LEAKS 0x2     /* unreferenced space, stale footer copy: harmless */
#define VHD_CHECK_REPAIRED 0x4  /* --repair changed the image */
#define VHD_CHECK_WARNINGS 0x8  /* noteworthy but valid */
struct vhd_check_opts {
  bool repair;
  void (*report)(void *opaque, const char *level, const char *msg);
  void *opaque;
};
int vhd_check(const char *path, const struct vhd_check_opts *opts, struct vhd_err *err);

/* Resizing (resize.c).  Opens path read-write (taking the image lock: an
 * image in use is refused with EBUSY, naming the holder where it can),
 * without its parent, and gives it the virtual size `size` rounded as
 * vhd_create does (see exact_size).  Growing a dynamic or differencing
 * image past what its BAT covers enlarges the BAT: into its own padding, or
 * over the blocks right after it (moved first to the end of the file), or,
 * when something else follows it, at a new place past everything.  A fixed
 * image grows with zeros.  Shrinking needs `shrink` and is refused with
 * ENOTEMPTY, naming the first offset, when data lies past the new end
 * (fixed: a byte that is not zero; otherwise a sector marked present in
 * this image's bitmaps).  Crash-safe at every step: the image reopens with
 * the old size or the new one, with the same content within the smaller. */
struct vhd_resize_opts {
  uint64_t size;
  bool exact_size;
  bool shrink;
  /* The VHD format forbids resizing a disk whose footer has the
   * saved-state flag set (a virtual machine's saved state depends on it):
   * refused with EPERM unless this is set. */
  bool ignore_saved_state;
  /* Called now and then with bytes of blocks moved so far and in all; may
   * be NULL. */
  void (*progress)(void *opaque, uint64_t done, uint64_t total);
  void *opaque;
  /* Called with what opening the image and its chain found that does not
   * stop the resize (a damaged footer, a parent's timestamp); may be NULL. */
  void (*warn)(void *opaque, const char *msg);
};
/* What a resize did. */
struct vhd_resize_result {
  uint64_t old_size, new_size; /* virtual sizes before and after */
  uint32_t blocks_moved;       /* blocks moved out of the way of a larger BAT */
  bool bat_moved;              /* the BAT itself went past everything */
};
/* Returns 0 (*res, when not NULL, says what was done) or a negative errno. */
int vhd_resize(const char *path, const struct vhd_resize_opts *opts,
               struct vhd_resize_result *res, struct vhd_err *err);

/* Compacting (compact.c), like Optimize-VHD.  Opens path read-write (the
 * image lock refuses an image in use, with EBUSY), with its parents for a
 * differencing image, then:
 *  1. blocks whose present sectors all read as zeros lose their BAT entry
 *     (in a differencing image only where the parent reads zeros there
 *     too: zeros that hide parent data stay);
 *  2. blocks from the end of the file move down into space that is
 *     verifiably free: blocks step 1 freed, and gaps after every other
 *     structure that hold only zeros or copies of the footer.  Anything
 *     else (structures, bytes the engine cannot account for) stays put;
 *  3. the footer moves down to the new end and the file is cut there.
 * Crash-safe at every step (a move is copy, sync, switch the BAT entry,
 * sync).  A fixed image has nothing to compact: EINVAL.  With dry_run
 * nothing is written and the result says what would be reclaimed. */
struct vhd_compact_opts {
  bool dry_run;
  /* As vhd_resize_opts: a saved-state disk is compacted only with this
   * (a dry run always reports). */
  bool ignore_saved_state;
  /* Called now and then with bytes of blocks examined or moved so far and
   * in all; may be NULL. */
  void (*progress)(void *opaque, uint64_t done, uint64_t total);
  void *opaque;
  void (*warn)(void *opaque, const char *msg); /* as vhd_resize_opts' */
};
struct vhd_compact_result {
  uint64_t file_size_before, file_size_after; /* after: would be, with dry_run */
  uint32_t blocks_freed, blocks_moved;
  uint32_t blocks_kept_batmap; /* blank, but Xen's batmap marks them full */
  uint32_t locators_moved;     /* parent locators whose data moved down after the blocks */
};
int vhd_compact(const char *path, const struct vhd_compact_opts *opts,
                struct vhd_compact_result *res, struct vhd_err *err);

/* Fault injection for tests, process-wide.  An injected failure does nothing
 * and returns the chosen errno, exactly as a failing disk would (so it
 * latches the image like a real one, see "Write errors").
 *   VHD_FAULT_POWER_CUT   after n more writes, syncs, truncates or punches
 *                         of image files, every further one fails, as if the
 *                         power had failed (crash tests).
 *   VHD_FAULT_SYNC_ONCE   the (n+1)th sync from now fails; the switch then
 *                         disarms and later syncs succeed, as a transient
 *                         write-back error would.
 *   VHD_FAULT_WRITE_ONCE  the same for the (n+1)th pwrite.
 * n < 0 disarms; errnum <= 0 means EIO.  The environment arms it at first
 * use: VHDNBD_FAULT_AFTER=N,
 * VHDNBD_FAULT_MODE=power-cut|sync-once|write-once|no-splice (default
 * power-cut), VHDNBD_FAULT_ERRNO=EIO|ENOSPC|EDQUOT|EINVAL or a number
 * (default EIO); an unparsable value leaves it disarmed. */
enum vhd_fault_mode {
  VHD_FAULT_POWER_CUT,
  VHD_FAULT_SYNC_ONCE,
  VHD_FAULT_WRITE_ONCE,
  /* Counts only splices into an image (vhd_write_splice), and from the
   * Nth on fails every one with the errno: a file system that takes no
   * splice (EINVAL), or one that fails them (EIO).  Other modes do not
   * count splices. */
  VHD_FAULT_NO_SPLICE,
};
void vhd_fault_arm_mode(enum vhd_fault_mode mode, long n, int errnum);
/* vhd_fault_arm_mode(VHD_FAULT_POWER_CUT, n, EIO) */
void vhd_fault_arm(long n);
/* True once the armed fault has been injected. */
bool vhd_fault_tripped(void);
/* Drops a handle without flushing or writing anything (simulated crash). */
void vhd_abandon(vhd_t *vhd);

/* Whole files that are not open images: a new image being written, a
 * temporary file renamed over an image, a directory to sync (the engine's
 * commit and rebase, vhdimg convert's output).  Each call is one I/O point
 * of the fault switch (a write, a sync, or "other" for truncate, rename and
 * unlink), so a crash test can stop the process at any of them; nothing is
 * latched.  They return 0 or a negative errno. */
int vhd_io_pwrite_fd(int fd, const void *buf, size_t len, uint64_t off);
int vhd_io_truncate_fd(int fd, uint64_t size);
int vhd_io_sync_fd(int fd);
int vhd_io_rename(const char *from, const char *to);
int vhd_io_unlink(const char *path);
/* fsync of the directory holding path (after a rename or unlink in it). */
int vhd_io_sync_dir_of(const char *path);

/* Commit and rebase of a differencing disk (commit.c, rebase.c).  Both take
 * the image locks as vhd_open does (an image served or open elsewhere is
 * refused, EBUSY, naming the holder when /proc tells it), and both are
 * crash-safe: a crash or power cut at any instant leaves the child reading
 * what it read before, and running the operation again finishes it.
 * progress (may be NULL) is called with the bytes done and the total. */
typedef void (*vhd_progress_cb)(void *opaque, uint64_t done, uint64_t total);

/* vhd_commit: writes every sector the differencing child holds into its
 * immediate parent (which may itself be differencing), makes it durable,
 * gives the parent a new footer timestamp, then either replaces the child
 * with an empty differencing disk of the same unique id over the parent
 * (written beside it and renamed over it), or with `remove` deletes it.
 * Refused: a parent locked by another process, a parent whose permissions
 * allow no writing (even for root), a parent smaller than the child, and,
 * unless `force`, a parent that other differencing disks name as theirs
 * (looked for in the parent's and the child's directories, files named
 * *.vhd or *.avhd: a heuristic, children elsewhere cannot be seen). */
struct vhd_commit_opts {
  bool remove;
  bool force;
  vhd_progress_cb progress;
  void *opaque;
  /* Findings that do not stop the commit (other children under force). */
  void (*warn)(void *opaque, const char *msg);
};
struct vhd_commit_result {
  char parent[4096];         /* the parent's path as the chain found it */
  uint64_t bytes;            /* bytes written into the parent */
  uint32_t parent_timestamp; /* the parent's new footer timestamp */
  unsigned other_children;   /* other children found (with force) */
};
int vhd_commit(const char *child, const struct vhd_commit_opts *opts,
               struct vhd_commit_result *res, struct vhd_err *err);

/* vhd_rebase: makes the differencing child's parent new_parent.  Safe mode
 * first copies into the child every sector it does not hold where the old
 * and the new parent's content differ (old content kept), so the child reads
 * the same, then rewrites the parent's identity and locators.  `unsafe`
 * rewrites only the identity, unique id, timestamp, name and W2ru/W2ku
 * locators (for a parent moved or renamed), without opening the old parent. */
struct vhd_rebase_opts {
  const char *new_parent;
  bool unsafe;
  vhd_progress_cb progress;
  void *opaque;
  void (*warn)(void *opaque, const char *msg); /* as vhd_resize_opts' */
};
struct vhd_rebase_result {
  uint64_t bytes; /* bytes copied into the child */
};
int vhd_rebase(const char *child, const struct vhd_rebase_opts *opts,
               struct vhd_rebase_result *res, struct vhd_err *err);

#endif
