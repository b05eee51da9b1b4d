/* source.c: an image read by convert and compare, a VHD (chain resolved) or a
 * raw disk image, with the ranges that may hold data.
 *
 * A file is taken as a VHD by its footer; one that has none is read as raw
 * only when the user says so (-f raw): a damaged VHD silently read as raw
 * would give a disk of garbage. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhdimg.h"

int parse_source_format(const char *s, enum source_format *fmt) {
  if (strcmp(s, "vhd") == 0 || strcmp(s, "vpc") == 0)
    *fmt = SOURCE_VHD;
  else if (strcmp(s, "raw") == 0)
    *fmt = SOURCE_RAW;
  else
    return -1;
  return 0;
}

static int open_raw(struct source *s, struct vhd_err *err) {
  s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) {
    int e = errno;
    snprintf(err->msg, sizeof err->msg, "%s: open: %s", s->path, strerror(e));
    return -e;
  }
  struct stat st;
  off_t end;
  if (fstat(s->fd, &st) < 0 || (end = lseek(s->fd, 0, SEEK_END)) < 0) {
    int e = errno;
    snprintf(err->msg, sizeof err->msg, "%s: size: %s", s->path, strerror(e));
    return -e;
  }
  if (S_ISDIR(st.st_mode)) {
    snprintf(err->msg, sizeof err->msg, "%s: is a directory", s->path);
    return -EISDIR;
  }
  s->fmt = SOURCE_RAW;
  s->file_size = (uint64_t)end;
  /* A disk is made of sectors: a partial last sector reads on as zeros. */
  s->size = ROUND_UP(s->file_size, (uint64_t)VHD_SECTOR_SIZE);
  return 0;
}

/* True when the file has a VHD footer cookie at its end or at offset 0, valid
 * or not: then it is a VHD, and what is wrong with it is worth reporting. */
static bool has_vhd_cookie(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  char cookie[8];
  off_t end = lseek(fd, 0, SEEK_END);
  bool found = (end >= 512 && pread(fd, cookie, 8, end - 512) == 8 &&
                memcmp(cookie, "conectix", 8) == 0) ||
               (pread(fd, cookie, 8, 0) == 8 && memcmp(cookie, "conectix", 8) == 0);
  close(fd);
  return found;
}

int source_open(struct source *s, const char *path, enum source_format fmt,
                const char *raw_hint, struct vhd_err *err) {
  *s = (struct source){.path = path, .fd = -1};
  if (fmt == SOURCE_RAW)
    return open_raw(s, err);

  struct warn_list warnings = {.print = true};
  /* Without the lock, like info and map: reading an image being served
   * sees it as of the server's last metadata update. */
  struct vhd_open_opts oo = {
      .flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
      .warn = warn_collect,
      .warn_opaque = &warnings,
  };
  int r = vhd_open(path, &oo, &s->vhd, err);
  warn_list_free(&warnings);
  if (r == 0) {
    s->fmt = SOURCE_VHD;
    s->size = vhd_virtual_size(s->vhd);
    return 0;
  }
  s->vhd = NULL;
  if (fmt == SOURCE_VHD || r != -EINVAL || has_vhd_cookie(path))
    return r;
  /* The engine's reason without the path it starts with. */
  char reason[sizeof err->msg];
  size_t plen = strlen(path);
  const char *why = err->msg;
  if (strncmp(why, path, plen) == 0 && strncmp(why + plen, ": ", 2) == 0)
    why += plen + 2;
  snprintf(reason, sizeof reason, "%s", why);
  snprintf(err->msg, sizeof err->msg, "%s is not a VHD image (%.700s); %s", path, reason,
           raw_hint);
  return -EINVAL;
}

void source_close(struct source *s) {
  if (s->vhd)
    vhd_close(s->vhd, NULL);
  if (s->fd >= 0)
    close(s->fd);
  s->vhd = NULL;
  s->fd = -1;
}

int source_read(struct source *s, void *buf, uint64_t off, size_t len, struct vhd_err *err) {
  if (s->vhd)
    return vhd_read(s->vhd, buf, off, len, err);
  uint8_t *p = buf;
  while (len) {
    if (off >= s->file_size) { /* the zeros that round the file up to a sector */
      memset(p, 0, len);
      return 0;
    }
    ssize_t n = pread(s->fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      snprintf(err->msg, sizeof err->msg, "%s: read at offset %" PRIu64 ": %s", s->path, off,
               strerror(e));
      return -e;
    }
    if (n == 0) { /* the file shrank under us: what is gone reads as zeros */
      memset(p, 0, len);
      return 0;
    }
    p += n;
    off += (uint64_t)n;
    len -= (size_t)n;
  }
  return 0;
}

static int run_add(struct run_list *l, uint64_t off, uint64_t len) {
  if (len == 0)
    return 0;
  if (l->n && l->runs[l->n - 1].off + l->runs[l->n - 1].len == off) {
    l->runs[l->n - 1].len += len; /* adjacent data from different levels */
  } else {
    if (l->n == l->cap) {
      size_t cap = l->cap ? l->cap * 2 : 64;
      struct data_run *r = realloc(l->runs, cap * sizeof *r);
      if (!r)
        return -ENOMEM;
      l->runs = r;
      l->cap = cap;
    }
    l->runs[l->n++] = (struct data_run){off, len};
  }
  l->total += len;
  return 0;
}

static int collect_vhd_run(void *opaque, const struct vhd_extent *ext) {
  if (!(ext->flags & VHD_MAP_DATA))
    return 0;
  return run_add(opaque, ext->offset, ext->length);
}

/* Holes of the file (SEEK_HOLE) read as zeros; what a file system cannot
 * tell apart is all data. */
static int raw_runs(struct source *s, struct run_list *l, struct vhd_err *err) {
  uint64_t pos = 0, end = s->file_size;
  while (pos < end) {
    off_t d = lseek(s->fd, (off_t)pos, SEEK_DATA);
    if (d < 0 && errno == ENXIO)
      return 0; /* a hole up to the end */
    if (d < 0)
      return run_add(l, pos, end - pos);
    off_t h = lseek(s->fd, d, SEEK_HOLE);
    uint64_t hole = h < 0 || (uint64_t)h > end ? end : (uint64_t)h;
    if ((uint64_t)d >= hole)
      break;
    if (run_add(l, (uint64_t)d, hole - (uint64_t)d) < 0) {
      snprintf(err->msg, sizeof err->msg, "out of memory");
      return -ENOMEM;
    }
    pos = hole;
  }
  return 0;
}

int source_data_runs(struct source *s, struct run_list *l, struct vhd_err *err) {
  if (s->vhd) {
    int r = vhd_map(s->vhd, 0, s->size, collect_vhd_run, l, err);
    if (r == -ENOMEM && !err->msg[0])
      snprintf(err->msg, sizeof err->msg, "out of memory");
    return r;
  }
  return raw_runs(s, l, err);
}

bool buf_is_zero(const uint8_t *p, size_t len) {
  /* Compare the buffer with itself shifted by one byte: zero iff the first
   * byte is zero and every byte equals its successor. */
  return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}
