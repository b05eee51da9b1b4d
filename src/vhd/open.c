/* open.c: opening, validating, describing and closing an image. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

int vhd_set_err(struct vhd_err *err, int errnum, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return errnum;
}

void vhd_warn(vhd_t *vhd, const char *fmt, ...) {
  if (!vhd->warn)
    return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  vhd->warn(vhd->warn_opaque, msg);
}

/* The error for a lock refused on fd: names the process holding one. */
static int lock_busy(int fd, const char *path, struct vhd_err *err) {
  struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  const char *who = "another process";
  char whobuf[128];
  if (fcntl(fd, F_OFD_GETLK, &q) == 0 && q.l_type != F_UNLCK && q.l_pid > 0) {
    snprintf(whobuf, sizeof whobuf, "process %d", (int)q.l_pid);
    who = whobuf;
  } else if (vhd_lock_holder(fd, whobuf, sizeof whobuf) > 0) {
    who = whobuf;
  }
  return vhd_set_err(err, -EBUSY,
                     "%s: image is locked by %s (%s lock held): is it served or open elsewhere?",
                     path, who, q.l_type == F_RDLCK ? "a read" : "a write");
}

/* Whether a lock of `type` on fd's whole file would be granted now: 0,
 * or -EBUSY naming the holder (this process too, through another open
 * file). */
static int lock_probe(int fd, const char *path, short type, struct vhd_err *err) {
  struct flock q = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(fd, F_OFD_GETLK, &q) < 0)
    return vhd_set_err(err, -errno, "%s: cannot test its lock: %s", path, strerror(errno));
  return q.l_type == F_UNLCK ? 0 : lock_busy(fd, path, err);
}

/* Takes a lock of `type` on fd's whole file, held while the open file
 * lives: 0, or -EBUSY naming the holder. */
static int lock_take(int fd, const char *path, short type, struct vhd_err *err) {
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  int e = errno;
  if (e == EAGAIN || e == EACCES)
    return lock_busy(fd, path, err);
  return vhd_set_err(err, -e, "%s: cannot lock the image: %s", path, strerror(e));
}

int vhd_lock_test(const char *path, bool write, struct vhd_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return vhd_set_err(err, -errno, "%s: %s", path, strerror(errno));
  int r = lock_probe(fd, path, write ? F_WRLCK : F_RDLCK, err);
  close(fd);
  return r;
}

int vhd_lock_replaced(int fd, const char *path, struct vhd_err *err) {
  /* Any lock, a reader's too: a server reading it as a parent would go on
   * reading the old file while its children are meant to read the new. */
  int r = lock_probe(fd, path, F_WRLCK, err);
  /* A file open for writing only (one its owner may replace but not
   * read) takes the lock its mode allows. */
  int fl = fcntl(fd, F_GETFL);
  short type = fl >= 0 && (fl & O_ACCMODE) == O_WRONLY ? F_WRLCK : F_RDLCK;
  return r < 0 ? r : lock_take(fd, path, type, err);
}

static int read_footer(vhd_t *vhd, struct vhd_err *err) {
  const char *p = vhd->path;
  uint8_t tail[VHD_FOOTER_SIZE], head[VHD_FOOTER_SIZE];
  if (vhd->file_size < VHD_FOOTER_SIZE)
    return vhd_set_err(err, -EINVAL,
                       "%s: file is %llu bytes, too small to hold a 512-byte VHD footer", p,
                       (unsigned long long)vhd->file_size);
  int r = vhd_io_pread(vhd->fd, tail, VHD_FOOTER_SIZE, vhd->file_size - VHD_FOOTER_SIZE);
  if (r < 0)
    return vhd_set_err(err, r, "%s: reading the footer: %s", p, strerror(-r));
  struct vhd_err tail_err;
  char where[64];
  snprintf(where, sizeof where, "footer at offset %llu",
           (unsigned long long)(vhd->file_size - VHD_FOOTER_SIZE));
  r = vhd_footer_check(tail, where, &tail_err);
  if (r == 0) {
    memcpy(vhd->footer_raw, tail, VHD_FOOTER_SIZE);
    vhd->data_end = vhd->file_size - VHD_FOOTER_SIZE;
    return 0;
  }
  /* A fixed disk of Virtual PC before 2004: a footer of 511 bytes ends the
   * file (the last reserved byte left out; it is zero, so the checksum
   * over 512 bytes holds with it put back).  Only a fixed disk: a dynamic
   * one cut by a byte has its copy at 0. */
  memset(head, 0, sizeof head);
  if (vhd_io_pread(vhd->fd, head, VHD_FOOTER_SIZE - 1, vhd->file_size - (VHD_FOOTER_SIZE - 1)) ==
          0 &&
      vhd_footer_check(head, "511-byte footer", NULL) == 0 &&
      be32_load(head + 60) == VHD_TYPE_FIXED) {
    memcpy(vhd->footer_raw, head, VHD_FOOTER_SIZE);
    vhd->footer_short = true;
    vhd->data_end = vhd->file_size - (VHD_FOOTER_SIZE - 1);
    vhd_warn(vhd,
             "%s: fixed disk with a 511-byte footer (Virtual PC before 2004) at offset %llu "
             "(vhdimg check --repair writes it whole)",
             p, (unsigned long long)(vhd->file_size - (VHD_FOOTER_SIZE - 1)));
    return 0;
  }
  /* Dynamic and differencing disks keep a copy at 0: use it when the
   * trailing one is damaged (torn write, truncation). */
  if (vhd->file_size >= 2 * VHD_FOOTER_SIZE &&
      vhd_io_pread(vhd->fd, head, VHD_FOOTER_SIZE, 0) == 0 &&
      vhd_footer_check(head, "footer copy at offset 0", NULL) == 0) {
    uint32_t type = be32_load(head + 60);
    if (type == VHD_TYPE_DYNAMIC || type == VHD_TYPE_DIFFERENCING) {
      memcpy(vhd->footer_raw, head, VHD_FOOTER_SIZE);
      vhd->footer_copy_used = true;
      vhd->data_end = ROUND_UP(vhd->file_size - VHD_FOOTER_SIZE, 512);
      vhd_warn(vhd, "%s: %s; using the footer copy at offset 0 (vhdimg check --repair rewrites it)",
               p, tail_err.msg);
      return 0;
    }
  }
  return vhd_set_err(err, -EINVAL, "%s: %s, and no valid footer copy at offset 0", p,
                     tail_err.msg);
}

static int validate_footer(vhd_t *vhd, const struct vhd_open_opts *opts, struct vhd_err *err) {
  const char *p = vhd->path;
  struct vhd_footer *f = &vhd->footer;
  vhd_footer_decode(vhd->footer_raw, f);
  if (f->disk_type != VHD_TYPE_FIXED && f->disk_type != VHD_TYPE_DYNAMIC &&
      f->disk_type != VHD_TYPE_DIFFERENCING)
    return vhd_set_err(err, -EINVAL,
                       "%s: footer disk type %u is not fixed (2), dynamic (3) or differencing (4)",
                       p, f->disk_type);
  vhd->type = (enum vhd_type)f->disk_type;
  if (f->version >> 16 != 1)
    return vhd_set_err(err, -EINVAL, "%s: footer format version 0x%08x is not 1.x", p,
                       f->version);
  if (!(f->features & VHD_FEATURES_RESERVED))
    vhd_warn(vhd, "%s: footer features 0x%08x lack the reserved bit 0x2", p, f->features);
  uint64_t size = f->current_size;
  if (size % 512) {
    vhd_warn(vhd, "%s: footer current size %llu is not a multiple of 512; rounding down", p,
             (unsigned long long)size);
    size -= size % 512;
  }
  uint64_t chs = (uint64_t)f->cylinders * f->heads * f->spt * 512;
  enum vhd_size_rule rule = opts ? opts->size_rule : VHD_SIZE_AUTO;
  if (rule == VHD_SIZE_CHS) {
    if (chs == 0 || chs > size)
      return vhd_set_err(err, -EINVAL,
                         "%s: geometry %u/%u/%u (%llu bytes) cannot be used as the size: the "
                         "current size is %llu",
                         p, f->cylinders, f->heads, f->spt, (unsigned long long)chs,
                         (unsigned long long)size);
    size = chs;
  } else if (rule == VHD_SIZE_AUTO) {
    size = vhd_footer_auto_size(f);
  }
  if (size == 0)
    return vhd_set_err(err, -EINVAL, "%s: footer current size is 0", p);
  if (size > VHD_MAX_VIRTUAL_SIZE)
    return vhd_set_err(err, -EINVAL, "%s: footer current size %llu exceeds the VHD limit of %llu",
                       p, (unsigned long long)size, (unsigned long long)VHD_MAX_VIRTUAL_SIZE);
  vhd->virtual_size = size;
  if (vhd->type == VHD_TYPE_FIXED) {
    if (vhd_fixed_footer_pos(vhd) < f->current_size)
      return vhd_set_err(err, -EINVAL,
                         "%s: fixed disk: file size %llu is smaller than current size %llu + "
                         "the %u-byte footer",
                         p, (unsigned long long)vhd->file_size,
                         (unsigned long long)f->current_size,
                         vhd->footer_short ? VHD_FOOTER_SIZE - 1 : VHD_FOOTER_SIZE);
    if (vhd_fixed_footer_pos(vhd) != f->current_size)
      vhd_warn(vhd, "%s: fixed disk: file size %llu is not current size %llu + 512", p,
               (unsigned long long)vhd->file_size, (unsigned long long)f->current_size);
  }
  return 0;
}

/* A header that failed its check (`why`) and that an interrupted
 * vhd_header_rewrite tore between its two sectors: the new header, from
 * the journal the rewrite left, replaces raw.  An open for writing writes
 * it back first, as the rewrite would have; before anything else could
 * grow the file over the journal. */
static int header_from_journal(vhd_t *vhd, uint64_t off, uint8_t *raw, const char *why,
                               struct vhd_err *err) {
  uint8_t journal[VHD_HEADER_SIZE];
  uint64_t at = vhd_header_journal_find(vhd, off, raw, journal);
  if (at == 0)
    return vhd_set_err(err, -EINVAL, "%s", why);
  const char *p = vhd->path;
  if (!vhd->readonly) {
    int r = vhd_io_pwrite(vhd, journal, sizeof journal, off);
    if (r == 0)
      r = vhd_io_sync(vhd);
    if (r < 0)
      return vhd_set_err(err, r,
                         "%s: writing the dynamic header back at %llu from its journal at %llu: %s",
                         p, (unsigned long long)off, (unsigned long long)at, strerror(-r));
  }
  vhd_warn(vhd,
           "%s: a rewrite of the header was cut short; %s the new header from the copy "
           "it journaled at offset %llu%s",
           why, vhd->readonly ? "reading" : "wrote back", (unsigned long long)at,
           vhd->readonly ? " (vhdimg check --repair writes it back)" : "");
  memcpy(raw, journal, sizeof journal);
  vhd->header_journal = at;
  return 0;
}

static int read_header(vhd_t *vhd, struct vhd_err *err) {
  const char *p = vhd->path;
  uint64_t off = vhd->footer.data_offset;
  if (off % 512 || off < VHD_FOOTER_SIZE || off > vhd->data_end ||
      vhd->data_end - off < VHD_HEADER_SIZE)
    return vhd_set_err(err, -EINVAL,
                       "%s: footer data offset %llu does not point at a dynamic header inside "
                       "the file (%llu bytes)",
                       p, (unsigned long long)off, (unsigned long long)vhd->file_size);
  uint8_t raw[VHD_HEADER_SIZE];
  int r = vhd_io_pread(vhd->fd, raw, sizeof raw, off);
  if (r < 0)
    return vhd_set_err(err, r, "%s: reading the dynamic header at %llu: %s", p,
                       (unsigned long long)off, strerror(-r));
  struct vhd_err bad;
  if (vhd_header_check(raw, p, off, &bad) < 0 &&
      (r = header_from_journal(vhd, off, raw, bad.msg, err)) < 0)
    return r;
  vhd->header_offset = off;
  struct vhd_header *h = &vhd->header;
  vhd_header_decode(raw, h);
  uint32_t bs = h->block_size;
  if (bs < VHD_MIN_BLOCK_SIZE || bs > VHD_MAX_BLOCK_SIZE || (bs & (bs - 1)))
    return vhd_set_err(err, -EINVAL,
                       "%s: dynamic header block size %u is not a power of two between %u and %u",
                       p, bs, VHD_MIN_BLOCK_SIZE, VHD_MAX_BLOCK_SIZE);
  uint64_t needed = DIV_ROUND_UP(vhd->virtual_size, bs);
  if (h->max_table_entries < needed)
    return vhd_set_err(err, -EINVAL,
                       "%s: dynamic header max table entries %u is less than the %llu blocks of "
                       "%u bytes that the size %llu needs",
                       p, h->max_table_entries, (unsigned long long)needed, bs,
                       (unsigned long long)vhd->virtual_size);
  /* A BAT larger than the file or than what the format can address is
   * hostile: refuse before allocating anything by it. */
  uint64_t limit = DIV_ROUND_UP(VHD_MAX_VIRTUAL_SIZE, VHD_MIN_BLOCK_SIZE);
  if (h->max_table_entries > limit ||
      (uint64_t)h->max_table_entries * 4 > vhd->file_size)
    return vhd_set_err(err, -EINVAL,
                       "%s: dynamic header max table entries %u is absurd for a %llu-byte file",
                       p, h->max_table_entries, (unsigned long long)vhd->file_size);
  vhd->max_entries = h->max_table_entries;
  vhd->block_size = bs;
  vhd->sectors_per_block = bs / 512;
  vhd->bitmap_size = ROUND_UP(DIV_ROUND_UP(vhd->sectors_per_block, 8), 512);
  vhd_utf16_to_utf8(h->parent_name_raw, sizeof h->parent_name_raw, true, vhd->parent_name,
                    sizeof vhd->parent_name);
  return 0;
}

void vhd_free(vhd_t *vhd) {
  if (!vhd)
    return;
  if (vhd->parent && !vhd->parent_borrowed)
    vhd_free(vhd->parent);
  if (vhd->fd >= 0)
    close(vhd->fd);
  /* Never drops the image's OFD lock: that belongs to fd's description. */
  if (vhd->dsync_fd >= 0)
    close(vhd->dsync_fd);
  /* A bitmap is only ever loaded for an allocated block: walking the BAT
   * instead of the (mostly untouched) pointer array keeps closing a huge
   * sparse image cheap. */
  if (vhd->bitmaps && vhd->bat)
    for (uint32_t i = 0; i < vhd->max_entries; i++)
      if (vhd->bat[i] != VHD_BAT_UNUSED)
        vhd_bitmap_free(vhd, vhd->bitmaps[i]);
  free(vhd->bitmaps);
  free(vhd->batmap);
  if (vhd->bitmap_ones)
    munmap(vhd->bitmap_ones, vhd_bitmap_ones_len(vhd));
  free(vhd->bat);
  free(vhd->block_dirty);
  free(vhd->dirty_blocks);
  free(vhd->bat_sector_dirty);
  free(vhd->dirty_bat_sectors);
  free(vhd->free_pending);
  free(vhd->free_ready);
  free(vhd->pins);
  free(vhd->retired);
  pthread_mutex_destroy(&vhd->lock);
  pthread_mutex_destroy(&vhd->flush_lock);
  pthread_mutex_destroy(&vhd->sync_lock);
  pthread_cond_destroy(&vhd->footer_moved);
  free(vhd->path);
  free(vhd);
}

/* Opens the image with O_NOATIME where the kernel allows it (the file's
 * owner, or CAP_FOWNER): reads that never touch the inode never wait for the
 * journal, which the event loop's non-blocking reads rely on.  Anyone else
 * gets EPERM and a plain open; then only a noatime mount keeps reads free of
 * atime updates. */
static int open_image_fd(vhd_t *vhd, struct vhd_err *err) {
  int mode = (vhd->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  /* Opening a FIFO blocks until a writer comes, and a device's open may
   * act: neither is an image (the fstat after the open checks again). */
  struct stat st;
  if (stat(vhd->path, &st) == 0 && !S_ISREG(st.st_mode))
    return vhd_set_err(err, -EINVAL, "%s: not a regular file", vhd->path);
  vhd->fd = open(vhd->path, mode | O_NOATIME);
  vhd->atime_free = vhd->fd >= 0;
  if (vhd->fd < 0 && errno == EPERM) {
    vhd->fd = open(vhd->path, mode);
    struct statvfs sv;
    vhd->atime_free = vhd->fd >= 0 && fstatvfs(vhd->fd, &sv) == 0 && (sv.f_flag & ST_NOATIME);
  }
  if (vhd->fd < 0)
    return vhd_set_err(err, -errno, "%s: %s", vhd->path, strerror(errno));
  return 0;
}

int vhd_open_depth(const char *path, const struct vhd_open_opts *opts, int depth, vhd_t **out,
                   struct vhd_err *err) {
  *out = NULL;
  vhd_t *vhd = calloc(1, sizeof *vhd);
  if (!vhd)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
  vhd->fd = -1;
  vhd->dsync_fd = -1;
  pthread_mutex_init(&vhd->lock, NULL);
  pthread_mutex_init(&vhd->flush_lock, NULL);
  pthread_mutex_init(&vhd->sync_lock, NULL);
  pthread_cond_init(&vhd->footer_moved, NULL);
  vhd->path = strdup(path);
  unsigned flags = opts ? opts->flags : 0;
  vhd->readonly = flags & VHD_OPEN_RDONLY;
  vhd->nolock = flags & VHD_OPEN_NOLOCK;
  vhd->size_rule = opts ? opts->size_rule : VHD_SIZE_AUTO;
  vhd->sparse_blocks = flags & VHD_OPEN_SPARSE_BLOCKS;
  if (opts) {
    vhd->warn = opts->warn;
    vhd->warn_opaque = opts->warn_opaque;
    vhd->max_file_size = opts->max_file_size;
  }
  int r;
  if (!vhd->path) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  if ((r = open_image_fd(vhd, err)) < 0)
    goto fail;
  struct stat st;
  if (fstat(vhd->fd, &st) < 0) {
    r = vhd_set_err(err, -errno, "%s: %s", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(st.st_mode)) {
    r = vhd_set_err(err, -EINVAL, "%s: not a regular file", path);
    goto fail;
  }
  vhd->file_size = (uint64_t)st.st_size;
  {
    /* vhd_io_punch's unit: the file system's block (statvfs; st_blksize
     * may be a preferred I/O size, a stripe), at least a page, at most
     * the 64 KiB no Linux file system's blocks exceed. */
    long page = sysconf(_SC_PAGESIZE);
    struct statvfs sv;
    vhd->punch_unit = page > 0 ? (uint64_t)page : 4096;
    if (fstatvfs(vhd->fd, &sv) == 0 && sv.f_bsize > vhd->punch_unit && sv.f_bsize <= 65536 &&
        !(sv.f_bsize & (sv.f_bsize - 1)))
      vhd->punch_unit = sv.f_bsize;
  }
  if (!(flags & VHD_OPEN_NOLOCK) &&
      (r = lock_take(vhd->fd, vhd->path, vhd->readonly ? F_RDLCK : F_WRLCK, err)) < 0)
    goto fail;
  if ((r = read_footer(vhd, err)) < 0 || (r = validate_footer(vhd, opts, err)) < 0)
    goto fail;
  if (vhd->type != VHD_TYPE_FIXED) {
    if ((r = read_header(vhd, err)) < 0 || (r = vhd_bat_load(vhd, err)) < 0)
      goto fail;
    if (vhd->type == VHD_TYPE_DIFFERENCING && opts && opts->parent) {
      if (memcmp(opts->parent->footer.uuid, vhd->header.parent_uuid, 16) != 0) {
        r = vhd_set_err(err, -EINVAL,
                        "%s: parent %s has a different unique id than the child's parent "
                        "unique id",
                        path, opts->parent->path);
        goto fail;
      }
      vhd->parent = opts->parent;
      vhd->parent_borrowed = true;
    } else if (vhd->type == VHD_TYPE_DIFFERENCING && !(flags & VHD_OPEN_NOPARENT) &&
               (r = vhd_parent_open(vhd, depth, err)) < 0) {
      goto fail;
    }
  }
  *out = vhd;
  return 0;
fail:
  vhd_free(vhd);
  return r;
}

int vhd_open(const char *path, const struct vhd_open_opts *opts, vhd_t **out,
             struct vhd_err *err) {
  return vhd_open_depth(path, opts, 0, out, err);
}

int vhd_close(vhd_t *vhd, struct vhd_err *err) {
  if (!vhd)
    return 0;
  int r = 0;
  if (!vhd->readonly) {
    r = vhd_flush(vhd, err);
    if (r == 0)
      r = vhd_window_release(vhd, err);
  }
  vhd_free(vhd);
  return r;
}

void vhd_abandon(vhd_t *vhd) { vhd_free(vhd); }

uint64_t vhd_virtual_size(const vhd_t *vhd) { return vhd->virtual_size; }
enum vhd_type vhd_get_type(const vhd_t *vhd) { return vhd->type; }
bool vhd_is_readonly(const vhd_t *vhd) { return vhd->readonly; }
const char *vhd_path(const vhd_t *vhd) { return vhd->path; }
int vhd_file_stat(const vhd_t *vhd, struct stat *st) { return fstat(vhd->fd, st) < 0 ? -errno : 0; }
vhd_t *vhd_parent(const vhd_t *vhd) { return vhd->parent; }

void vhd_get_info(const vhd_t *vhd, struct vhd_info *info) {
  memset(info, 0, sizeof *info);
  const struct vhd_footer *f = &vhd->footer;
  info->type = vhd->type;
  info->virtual_size = vhd->virtual_size;
  info->current_size = f->current_size;
  info->original_size = f->original_size;
  info->chs_size = (uint64_t)f->cylinders * f->heads * f->spt * 512;
  info->cylinders = f->cylinders;
  info->heads = f->heads;
  info->sectors_per_track = f->spt;
  memcpy(info->creator_app, f->creator_app, 4);
  info->creator_version = f->creator_version;
  info->creator_os = f->creator_os;
  info->features = f->features;
  info->timestamp = f->timestamp;
  memcpy(info->uuid, f->uuid, 16);
  info->saved_state = f->saved_state != 0;
  info->footer_copy_used = vhd->footer_copy_used;
  info->file_size = vhd->file_size;
  if (vhd->type != VHD_TYPE_FIXED) {
    info->header_offset = vhd->header_offset;
    info->bat_offset = vhd->header.table_offset;
    info->max_table_entries = vhd->max_entries;
    info->block_size = vhd->block_size;
    info->allocated_blocks = vhd->allocated_blocks;
    if (vhd->batmap) {
      info->xen_batmap = true;
      info->batmap_offset = vhd->batmap_offset;
      for (uint32_t i = 0; i < vhd->max_entries; i++)
        info->batmap_full_blocks += vhd_batmap_full(vhd, i);
      info->batmap_checksum_ok =
          vhd_batmap_checksum(vhd, vhd->footer.current_size) == vhd->batmap_checksum;
    }
  }
  if (vhd->type == VHD_TYPE_DIFFERENCING) {
    memcpy(info->parent_uuid, vhd->header.parent_uuid, 16);
    info->parent_timestamp = vhd->header.parent_timestamp;
    snprintf(info->parent_name, sizeof info->parent_name, "%s", vhd->parent_name);
  }
}
