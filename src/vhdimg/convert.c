/* convert.c: `vhdimg convert`, a VHD (chain flattened) to raw, fixed or
 * dynamic.
 *
 * Only data is copied: ranges the source maps as zero are skipped, and so are
 * chunks that read back as all zeros, so raw and dynamic outputs stay sparse. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhdimg.h"

#define CONVERT_CHUNK (2u * 1024 * 1024)
/* Zeros are looked for in units of a file system block: a data extent (a
 * whole allocated block of a QEMU-written image, say) is often mostly zeros. */
#define ZERO_UNIT 4096u

enum out_format { OUT_RAW, OUT_FIXED, OUT_DYNAMIC };

void usage_convert(FILE *f) {
  fprintf(f,
          "Usage: vhdimg convert [-O raw|fixed|dynamic] [-p] SRC DST\n"
          "\n"
          "Copies the virtual disk of the VHD image SRC (any type; a differencing\n"
          "chain is flattened) into DST, which is created or overwritten.  Only data\n"
          "is written: raw and dynamic outputs stay sparse.\n"
          "\n"
          "  -O, --output-format FMT  raw (default), fixed or dynamic\n"
          "  -p, --progress           show a progress bar (when stderr is a terminal)\n"
          "  -h, --help               show this help\n");
}

struct data_run {
  uint64_t off, len;
};

struct run_list {
  struct data_run *runs;
  size_t n, cap;
  uint64_t total; /* bytes of data, for progress */
};

static int collect_run(void *opaque, const struct vhd_extent *ext) {
  struct run_list *l = opaque;
  if (!(ext->flags & VHD_MAP_DATA))
    return 0;
  if (l->n && l->runs[l->n - 1].off + l->runs[l->n - 1].len == ext->offset) {
    l->runs[l->n - 1].len += ext->length; /* adjacent data from different levels */
  } else {
    if (l->n == l->cap) {
      size_t cap = l->cap ? l->cap * 2 : 64;
      struct data_run *r = realloc(l->runs, cap * sizeof *r);
      if (!r)
        return -ENOMEM;
      l->runs = r;
      l->cap = cap;
    }
    l->runs[l->n++] = (struct data_run){ext->offset, ext->length};
  }
  l->total += ext->length;
  return 0;
}

static bool all_zero(const uint8_t *p, size_t len) {
  /* Compare the buffer with itself shifted by one byte: zero iff the first
   * byte is zero and every byte equals its successor. */
  return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

struct output {
  enum out_format fmt;
  const char *path;
  int fd;      /* raw */
  vhd_t *vhd;  /* fixed, dynamic */
};

static int out_open(struct output *o, uint64_t size, struct vhd_err *err) {
  if (o->fmt == OUT_RAW) {
    o->fd = open(o->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0) {
      int e = errno;
      snprintf(err->msg, sizeof err->msg, "%s: open: %s", o->path, strerror(e));
      return -e;
    }
    struct stat st;
    /* A block device keeps its size; a file gets the size as a hole. */
    if (fstat(o->fd, &st) == 0 && S_ISREG(st.st_mode) && ftruncate(o->fd, (off_t)size) < 0) {
      int e = errno;
      snprintf(err->msg, sizeof err->msg, "%s: ftruncate to %" PRIu64 ": %s", o->path, size,
               strerror(e));
      return -e;
    }
    return 0;
  }

  /* Overwrite like the raw output does, whether or not vhd_create would. */
  if (unlink(o->path) < 0 && errno != ENOENT) {
    int e = errno;
    snprintf(err->msg, sizeof err->msg, "%s: unlink: %s", o->path, strerror(e));
    return -e;
  }

  uint16_t cyl;
  uint8_t heads, spt;
  struct vhd_create_opts co = {
      .type = o->fmt == OUT_FIXED ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC,
      .size = size,
      /* Keep the size a CHS geometry cannot express exactly. */
      .exact_size = vhd_geometry_for_size(size, &cyl, &heads, &spt) != size,
  };
  int r = vhd_create(o->path, &co, err);
  if (r < 0)
    return r;
  struct vhd_open_opts oo = {.flags = 0};
  r = vhd_open(o->path, &oo, &o->vhd, err);
  if (r < 0)
    return r;
  if (vhd_virtual_size(o->vhd) != size) {
    snprintf(err->msg, sizeof err->msg,
             "%s: created with virtual size %" PRIu64 ", expected %" PRIu64, o->path,
             vhd_virtual_size(o->vhd), size);
    return -EINVAL;
  }
  return 0;
}

static int out_write(struct output *o, const void *buf, uint64_t off, size_t len,
                     struct vhd_err *err) {
  if (o->fmt != OUT_RAW)
    return vhd_write(o->vhd, buf, off, len, 0, err);
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = pwrite(o->fd, p, len, (off_t)off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      int e = w < 0 ? errno : EIO;
      snprintf(err->msg, sizeof err->msg, "%s: write at offset %" PRIu64 ": %s", o->path, off,
               strerror(e));
      return -e;
    }
    p += w;
    off += (uint64_t)w;
    len -= (size_t)w;
  }
  return 0;
}

/* Closes the output; returns the first error (the flush, for an image). */
static int out_close(struct output *o, struct vhd_err *err) {
  int r = 0;
  if (o->fd >= 0) {
    if (close(o->fd) < 0 && err) {
      r = -errno;
      snprintf(err->msg, sizeof err->msg, "%s: close: %s", o->path, strerror(-r));
    }
    o->fd = -1;
  }
  if (o->vhd) {
    r = vhd_close(o->vhd, err);
    o->vhd = NULL;
  }
  return r;
}

static void progress(bool show, uint64_t done, uint64_t total) {
  if (!show)
    return;
  double pct = total ? 100.0 * (double)done / (double)total : 100.0;
  fprintf(stderr, "\r    (%6.2f/100%%)", pct);
  if (done >= total)
    fputc('\n', stderr);
  fflush(stderr);
}

/* Writes the parts of buf that are not all zeros, in runs of ZERO_UNIT. */
static int write_data(struct output *o, const uint8_t *buf, uint64_t off, size_t len,
                      struct vhd_err *err) {
  size_t run = 0, run_len = 0; /* current run of non-zero units */
  for (size_t i = 0; i < len;) {
    size_t n = MIN((size_t)ZERO_UNIT, len - i);
    if (!all_zero(buf + i, n)) {
      if (run_len == 0)
        run = i;
      run_len += n;
    } else if (run_len) {
      int r = out_write(o, buf + run, off + run, run_len, err);
      if (r < 0)
        return r;
      run_len = 0;
    }
    i += n;
  }
  return run_len ? out_write(o, buf + run, off + run, run_len, err) : 0;
}

static int copy_data(vhd_t *src, const struct run_list *l, struct output *o, bool show,
                     struct vhd_err *err) {
  CLEANUP_FREE uint8_t *buf = malloc(CONVERT_CHUNK);
  if (!buf) {
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return -ENOMEM;
  }
  uint64_t done = 0;
  progress(show, 0, l->total);
  for (size_t i = 0; i < l->n; i++) {
    for (uint64_t pos = 0; pos < l->runs[i].len;) {
      uint64_t off = l->runs[i].off + pos;
      size_t len = (size_t)MIN((uint64_t)CONVERT_CHUNK, l->runs[i].len - pos);
      int r = vhd_read(src, buf, off, len, err);
      if (r < 0)
        return r;
      if ((r = write_data(o, buf, off, len, err)) < 0)
        return r;
      pos += len;
      done += len;
      progress(show, done, l->total);
    }
  }
  if (l->total == 0)
    progress(show, 0, 0);
  return 0;
}

static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

int cmd_convert(int argc, char **argv) {
  static const struct option longopts[] = {
      {"output-format", required_argument, NULL, 'O'},
      {"progress", no_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct output o = {.fmt = OUT_RAW, .fd = -1};
  bool show_progress = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":O:ph", longopts, NULL)) != -1) {
    switch (c) {
    case 'O':
      if (strcmp(optarg, "raw") == 0)
        o.fmt = OUT_RAW;
      else if (strcmp(optarg, "fixed") == 0)
        o.fmt = OUT_FIXED;
      else if (strcmp(optarg, "dynamic") == 0)
        o.fmt = OUT_DYNAMIC;
      else
        return usage_error("convert", "unknown output format '%s' (raw, fixed, dynamic)",
                           optarg);
      break;
    case 'p':
      show_progress = true;
      break;
    case 'h':
      usage_convert(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("convert", c, argv);
    }
  }
  if (argc - optind < 2)
    return usage_error("convert", "missing %s", argc - optind < 1 ? "SRC and DST" : "DST");
  if (argc - optind > 2)
    return usage_error("convert", "unexpected argument '%s'", argv[optind + 2]);
  const char *src_path = argv[optind];
  o.path = argv[optind + 1];
  if (same_file(src_path, o.path)) {
    print_error("%s: source and destination are the same file", o.path);
    return VHDIMG_EXIT_FAILURE;
  }
  show_progress = show_progress && isatty(STDERR_FILENO);

  struct warn_list warnings = {.print = true};
  /* Without the lock, like info and map: converting an image being served
   * copies it as of the server's last metadata update. */
  struct vhd_open_opts oo = {
      .flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
      .warn = warn_collect,
      .warn_opaque = &warnings,
  };
  struct vhd_err err = {{0}};
  vhd_t *src = NULL;
  int r = vhd_open(src_path, &oo, &src, &err);
  warn_list_free(&warnings);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }

  struct run_list runs = {0};
  bool created = false;
  uint64_t size = vhd_virtual_size(src);
  r = vhd_map(src, 0, size, collect_run, &runs, &err);
  if (r < 0)
    goto out;
  created = true;
  r = out_open(&o, size, &err);
  if (r < 0)
    goto out;
  r = copy_data(src, &runs, &o, show_progress, &err);
  if (r < 0)
    goto out;
  r = out_close(&o, &err);

out:
  if (r < 0) {
    print_vhd_error(r, &err);
    out_close(&o, NULL);
    if (created)
      unlink(o.path); /* no half-written output left behind */
  }
  free(runs.runs);
  vhd_close(src, NULL);
  return r < 0 ? VHDIMG_EXIT_FAILURE : VHDIMG_EXIT_OK;
}
