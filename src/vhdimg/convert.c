/* convert.c: `vhdimg convert`, a VHD (chain flattened) or a raw disk image to
 * raw, fixed or dynamic.
 *
 * Only data is copied: ranges the source maps as zero (unallocated blocks,
 * holes of a raw file) are skipped, and so are chunks that read back as all
 * zeros, so raw and dynamic outputs stay sparse; a block device, which
 * keeps what it held, is zeroed first.
 *
 * The output is written under a temporary name beside DST, made durable, and
 * renamed over DST at the end: DST is at every instant either what it was or
 * the whole new image, never a half-made one.  Every write, truncate, sync,
 * rename and unlink of the output goes through the engine's whole-file I/O
 * (vhd.h), so the fault switch can stop a conversion at any of them.  A
 * crash leaves the temporary file (.DST.XXXXXX) behind; a failure that
 * cannot remove it says so. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhdimg.h"

#define CONVERT_CHUNK (2u * 1024 * 1024)
/* Zeros are looked for in units of a file system block (or of a smaller VHD
 * block, which a piece of zeros must not allocate): a data extent (a whole
 * allocated block of a QEMU-written image, say) is often mostly zeros. */
#define ZERO_UNIT 4096u

enum out_format { OUT_RAW, OUT_FIXED, OUT_DYNAMIC };

void usage_convert(FILE *f) {
  fprintf(f,
          "Usage: vhdimg convert [-f vhd|raw] [-O raw|fixed|dynamic] [--block-size N]\n"
          "                      [--exact] [--align SIZE] [-p] [--json] SRC DST\n"
          "\n"
          "Copies the virtual disk of SRC, a VHD image (any type; a differencing\n"
          "chain is flattened) or with -f raw a raw disk image, into DST, which is\n"
          "created or replaced.  Only data is written: raw and dynamic outputs stay\n"
          "sparse.  A SRC without a VHD footer is refused unless -f raw is given.\n"
          "\n"
          "  -f, --format FMT         vhd or raw: how to read SRC (default: vhd,\n"
          "                           recognised by its footer)\n"
          "  -O, --output-format FMT  raw (default), fixed or dynamic\n"
          "      --block-size N       block size of a dynamic output (a power of\n"
          "                           two from 512 to 256M, default 2M; under 4K\n"
          "                           QEMU and libvhdi cannot read it: a warning)\n"
          "      --exact              VHD output of a raw SRC: keep its size instead\n"
          "                           of rounding it up to the next CHS geometry\n"
          "      --align SIZE         round the virtual size up to a multiple of\n"
          "                           SIZE (a multiple of 512); keeps it exactly\n"
          "  -p, --progress           show a progress bar (when stderr is a terminal)\n"
          "      --json               print what was written as one JSON object:\n"
          "                           source, destination, format, virtual-size,\n"
          "                           bytes-written, block-size and allocated-blocks\n"
          "                           (null but for a dynamic output)\n"
          "  -h, --help               show this help\n");
}

struct output {
  enum out_format fmt;
  const char *path; /* DST, or the file a symbolic link DST points to */
  char *target;     /* that file's name, when DST is a link */
  char *tmp;        /* the file written, renamed to DST at the end; NULL when
                       DST is a device written in place */
  int fd;           /* raw */
  int dst_fd;       /* the DST replaced, read-locked until the rename; or -1 */
  vhd_t *vhd;       /* fixed, dynamic */
  uint64_t size;    /* virtual size of the output */
  size_t zero_unit; /* all-zero pieces of this size are not written */
  uint64_t written; /* bytes of data written */
  uint32_t block_size, allocated_blocks; /* dynamic, read before closing */
};

static const char *out_file(const struct output *o) { return o->tmp ? o->tmp : o->path; }

static int set_errno_msg(struct vhd_err *err, int e, const char *path, const char *what) {
  snprintf(err->msg, sizeof err->msg, "%s: %s: %s", path, what, strerror(e));
  return -e;
}

/* The file a symbolic link points to, followed to the end even when that
 * file does not exist yet (as open(O_CREAT) would); malloc'ed. */
static char *link_target(const char *path) {
  char *p = realpath(path, NULL);
  if (p || errno != ENOENT)
    return p;
  /* Dangling: its target, relative to the link's directory. */
  char buf[4096];
  ssize_t n = readlink(path, buf, sizeof buf - 1);
  if (n < 0)
    return NULL;
  buf[n] = '\0';
  if (buf[0] == '/')
    return strdup(buf);
  CLEANUP_FREE char *d = strdup(path);
  if (!d || asprintf(&p, "%s/%s", dirname(d), buf) < 0)
    return NULL;
  return p;
}

/* DST, opened to lock it: for reading, or for writing where only that is
 * allowed (a file its owner made write-only may still be replaced). */
static int dst_open(const char *path) {
  /* O_NONBLOCK: a FIFO put at DST meanwhile must not hang the open. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0 && errno == EACCES)
    fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  return fd;
}

/* Locks the file at DST (vhd_lock_replaced), keeping it open in dst_fd:
 * when the convert starts, and again just before the rename, when it must
 * still be the file locked at the start.  Another file put there meanwhile
 * (a copy, an image a server has just opened) is checked as that one was,
 * and locked in its place; none there leaves nothing to replace. */
static int dst_lock(struct output *o, const char *what, struct vhd_err *err) {
  int fd = dst_open(o->path);
  if (fd < 0)
    return errno == ENOENT ? 0 : set_errno_msg(err, errno, o->path, what);
  struct stat a, b;
  if (o->dst_fd >= 0 && fstat(o->dst_fd, &a) == 0 && fstat(fd, &b) == 0 &&
      a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
    close(fd);
    return 0;
  }
  int r = vhd_lock_replaced(fd, o->path, err);
  if (r < 0) {
    close(fd);
    return r;
  }
  if (o->dst_fd >= 0)
    close(o->dst_fd);
  o->dst_fd = fd;
  return 0;
}

/* Makes the file the output is written to: a temporary one beside DST, or DST
 * itself when it is a device (a raw output only). */
static int out_prepare(struct output *o, struct vhd_err *err) {
  struct stat st;
  if (stat(o->path, &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) {
      snprintf(err->msg, sizeof err->msg, "%s: is a directory", o->path);
      return -EISDIR;
    }
    if (o->fmt != OUT_RAW) {
      snprintf(err->msg, sizeof err->msg,
               "%s: not a regular file: only a raw output can be written to a device",
               o->path);
      return -EINVAL;
    }
    /* O_EXCL on a block device: refused while it is mounted or held by
     * another exclusive user (a server, the device mapper), whose data
     * the conversion would overwrite. */
    o->fd = open(o->path, O_WRONLY | O_CLOEXEC | (S_ISBLK(st.st_mode) ? O_EXCL : 0));
    if (o->fd < 0 && errno == EBUSY) {
      snprintf(err->msg, sizeof err->msg,
               "%s: the device is in use (mounted, or held by another program)", o->path);
      return -EBUSY;
    }
    return o->fd < 0 ? set_errno_msg(err, errno, o->path, "open") : 0;
  }

  /* A symbolic link stays one: the file it points to is replaced. */
  struct stat lst;
  if (lstat(o->path, &lst) == 0 && S_ISLNK(lst.st_mode)) {
    if (!(o->target = link_target(o->path)))
      return set_errno_msg(err, errno, o->path, "reading the symbolic link");
    o->path = o->target;
  }
  /* A DST that exists is replaced by a rename.  A server serving it (or
   * a chain it is a parent of) would go on with the old file, unlinked,
   * and lose every write it acknowledged: refused, as vhdimg's other
   * commands refuse a served image, and locked until the rename. */
  int r = dst_lock(o, "opening it to see whether it is in use", err);
  if (r < 0)
    return r;
  CLEANUP_FREE char *d = strdup(o->path), *b = strdup(o->path);
  if (!d || !b) {
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return -ENOMEM;
  }
  if (asprintf(&o->tmp, "%s/.%s.XXXXXX", dirname(d), basename(b)) < 0) {
    o->tmp = NULL;
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return -ENOMEM;
  }
  o->fd = mkstemp(o->tmp);
  if (o->fd < 0) {
    int e = errno;
    free(o->tmp);
    o->tmp = NULL; /* nothing to remove */
    return set_errno_msg(err, e, o->path, "creating a temporary file beside it");
  }
  /* mkstemp makes it private; give it the mode a new file gets. */
  mode_t mask = umask(0);
  umask(mask);
  if (fchmod(o->fd, 0644 & ~mask) < 0)
    return set_errno_msg(err, errno, o->tmp, "chmod");
  return 0;
}

/* A device keeps what it held where nothing is written: the zeros of the
 * source (skipped, to keep files sparse) must be written to it.  Zeroed
 * first, over the whole virtual size, by the device where it can
 * (BLKZEROOUT: a write-zeroes command, or the kernel's own writes). */
static int device_zero(struct output *o, uint64_t size, struct vhd_err *err) {
  int sector = 512; /* BLKZEROOUT takes whole logical sectors (4 KiB on 4Kn disks) */
  if (ioctl(o->fd, BLKSSZGET, &sector) < 0 || sector < 512)
    sector = 512;
  uint64_t range[2] = {0, ROUND_DOWN(size, (uint64_t)sector)};
  uint64_t at = range[1] && ioctl(o->fd, BLKZEROOUT, range) == 0 ? range[1] : 0;
  static const uint8_t zeros[65536];
  while (at < size) {
    size_t n = (size_t)MIN(size - at, (uint64_t)sizeof zeros);
    int r = vhd_io_pwrite_fd(o->fd, zeros, n, at);
    if (r < 0) {
      snprintf(err->msg, sizeof err->msg, "%s: zeroing at offset %" PRIu64 ": %s", o->path, at,
               strerror(-r));
      return r;
    }
    at += n;
  }
  return 0;
}

/* Sizes the raw output, or creates the VHD one: with `exact` its virtual size
 * is `size`, otherwise the smallest CHS geometry at least as large. */
static int out_open(struct output *o, uint64_t size, bool exact, uint32_t block_size,
                    struct vhd_err *err) {
  int r = out_prepare(o, err);
  if (r < 0)
    return r;
  o->size = size;
  o->zero_unit = ZERO_UNIT;
  if (o->fmt == OUT_DYNAMIC && block_size && block_size < ZERO_UNIT)
    o->zero_unit = block_size;
  if (o->fmt == OUT_RAW) {
    struct stat st;
    if (fstat(o->fd, &st) < 0)
      return set_errno_msg(err, errno, out_file(o), "stat");
    if (S_ISREG(st.st_mode)) { /* the size as a hole */
      if ((r = vhd_io_truncate_fd(o->fd, size)) < 0)
        return set_errno_msg(err, -r, out_file(o), "ftruncate");
      return 0;
    }
    off_t end = lseek(o->fd, 0, SEEK_END); /* a device keeps its size */
    if (end >= 0 && (uint64_t)end < size) {
      snprintf(err->msg, sizeof err->msg, "%s: %" PRIu64 " bytes, too small for %" PRIu64,
               o->path, (uint64_t)end, size);
      return -ENOSPC;
    }
    return S_ISBLK(st.st_mode) ? device_zero(o, size, err) : 0;
  }

  /* vhd_create makes the file itself (O_EXCL). */
  close(o->fd);
  o->fd = -1;
  if ((r = vhd_io_unlink(o->tmp)) < 0)
    return set_errno_msg(err, -r, o->tmp, "unlink");
  struct vhd_create_opts co = {
      .type = o->fmt == OUT_FIXED ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC,
      .size = size,
      .block_size = block_size,
      /* An exact size a CHS geometry expresses needs no "qem2" creator. */
      .exact_size = exact && vhd_geometry_for_size(size, NULL, NULL, NULL) != size,
  };
  r = vhd_create(o->tmp, &co, err);
  if (r < 0)
    return r;
  /* Holes stay holes: the copy writes each block's data once, in large
   * runs, so reserving blocks would only cost the disk of their unwritten
   * parts. */
  struct vhd_open_opts oo = {.flags = VHD_OPEN_SPARSE_BLOCKS};
  r = vhd_open(o->tmp, &oo, &o->vhd, err);
  if (r < 0)
    return r;
  o->size = vhd_virtual_size(o->vhd);
  if (o->size < size || (exact && o->size != size)) {
    snprintf(err->msg, sizeof err->msg,
             "%s: created with virtual size %" PRIu64 ", expected %" PRIu64, o->tmp, o->size,
             size);
    return -EINVAL;
  }
  return 0;
}

static int out_write(struct output *o, const void *buf, uint64_t off, size_t len,
                     struct vhd_err *err) {
  o->written += len;
  if (o->fmt != OUT_RAW)
    return vhd_write(o->vhd, buf, off, len, 0, err);
  int r = vhd_io_pwrite_fd(o->fd, buf, len, off);
  if (r < 0)
    snprintf(err->msg, sizeof err->msg, "%s: write at offset %" PRIu64 ": %s", out_file(o), off,
             strerror(-r));
  return r;
}

/* Makes the output durable and puts it in place of DST. */
static int out_commit(struct output *o, struct vhd_err *err) {
  int r = 0;
  if (o->fd >= 0) {
    int rc = vhd_io_sync_fd(o->fd);
    if (rc < 0)
      r = set_errno_msg(err, -rc, out_file(o), "fsync");
    if (close(o->fd) < 0 && r == 0)
      r = set_errno_msg(err, errno, out_file(o), "close");
    o->fd = -1;
  }
  if (o->vhd) {
    struct vhd_info info;
    vhd_get_info(o->vhd, &info);
    o->block_size = info.block_size;
    o->allocated_blocks = info.allocated_blocks;
    int rc = vhd_close(o->vhd, err); /* flushes */
    o->vhd = NULL;
    if (rc < 0 && r == 0)
      r = rc;
  }
  if (r < 0 || !o->tmp)
    return r;
  if ((r = dst_lock(o, "opening it again to see whether it is in use", err)) < 0)
    return r;
  if ((r = vhd_io_rename(o->tmp, o->path)) < 0)
    return set_errno_msg(err, -r, o->path, "rename from the temporary file");
  free(o->tmp);
  o->tmp = NULL;
  /* The rename itself must survive a crash too. */
  if ((r = vhd_io_sync_dir_of(o->path)) < 0)
    r = set_errno_msg(err, -r, o->path, "fsync of its directory");
  if (o->dst_fd >= 0)
    close(o->dst_fd);
  o->dst_fd = -1;
  return r;
}

/* After a failure: drops the output and removes the temporary file. */
static void out_abort(struct output *o) {
  if (o->fd >= 0)
    close(o->fd);
  o->fd = -1;
  if (o->dst_fd >= 0)
    close(o->dst_fd);
  o->dst_fd = -1;
  if (o->vhd)
    vhd_abandon(o->vhd); /* it is about to be removed: nothing to flush */
  o->vhd = NULL;
  /* vhd_create removes a file it could not finish: then nothing is left. */
  struct stat st;
  int r = o->tmp && lstat(o->tmp, &st) == 0 ? vhd_io_unlink(o->tmp) : 0;
  if (r < 0 && r != -ENOENT)
    print_error("%s: could not remove the temporary file (%s); remove it by hand", o->tmp,
                strerror(-r));
  free(o->tmp);
  o->tmp = NULL;
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

/* Writes the parts of buf that are not all zeros, in runs of zero_unit. */
static int write_data(struct output *o, const uint8_t *buf, uint64_t off, size_t len,
                      struct vhd_err *err) {
  size_t run = 0, run_len = 0; /* current run of non-zero units */
  for (size_t i = 0; i < len;) {
    size_t n = MIN(o->zero_unit, len - i);
    if (!buf_is_zero(buf + i, n)) {
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

static int copy_data(struct source *src, const struct run_list *l, struct output *o, bool show,
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
      int r = source_read(src, buf, off, len, err);
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

/* The virtual size of the output, before any CHS rounding. */
static int output_size(const struct source *src, const struct output *o, uint64_t align,
                       uint64_t *size) {
  uint64_t s = src->size;
  if (align) {
    if (s > UINT64_MAX - align) {
      print_error("%s: %" PRIu64 " bytes cannot be aligned to %" PRIu64, src->path, s, align);
      return -ERANGE;
    }
    s = ROUND_UP(s, align);
  }
  if (o->fmt != OUT_RAW && s == 0) {
    print_error("%s: the disk is empty, and a VHD cannot be 0 bytes", src->path);
    return -EINVAL;
  }
  if (o->fmt != OUT_RAW && s > VHD_MAX_VIRTUAL_SIZE) {
    print_error("%s: %" PRIu64 " bytes%s, more than a VHD holds (%" PRIu64 ")", src->path, s,
                align ? " once aligned" : "", (uint64_t)VHD_MAX_VIRTUAL_SIZE);
    return -EFBIG;
  }
  *size = s;
  return 0;
}

static void print_json(const char *src, const struct output *o, const char *dst) {
  static const char *const names[] = {[OUT_RAW] = "raw", [OUT_FIXED] = "fixed",
                                      [OUT_DYNAMIC] = "dynamic"};
  printf("{\"source\": ");
  json_put_string(stdout, src);
  printf(", \"destination\": ");
  json_put_string(stdout, dst);
  printf(", \"format\": \"%s\", \"virtual-size\": %" PRIu64 ", \"bytes-written\": %" PRIu64,
         names[o->fmt], o->size, o->written);
  if (o->fmt == OUT_DYNAMIC)
    printf(", \"block-size\": %" PRIu32 ", \"allocated-blocks\": %" PRIu32 "}\n", o->block_size,
           o->allocated_blocks);
  else
    printf(", \"block-size\": null, \"allocated-blocks\": null}\n");
}

int cmd_convert(int argc, char **argv) {
  enum { OPT_BLOCK_SIZE = 256, OPT_EXACT, OPT_ALIGN, OPT_JSON };
  static const struct option longopts[] = {
      {"format", required_argument, NULL, 'f'},
      {"output-format", required_argument, NULL, 'O'},
      {"block-size", required_argument, NULL, OPT_BLOCK_SIZE},
      {"exact", no_argument, NULL, OPT_EXACT},
      {"align", required_argument, NULL, OPT_ALIGN},
      {"progress", no_argument, NULL, 'p'},
      {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct output o = {.fmt = OUT_RAW, .fd = -1, .dst_fd = -1};
  enum source_format in_fmt = SOURCE_AUTO;
  bool show_progress = false, exact = false, json = false;
  uint64_t align = 0, bs = 0;
  int c, r;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":f:O:ph", longopts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (parse_source_format(optarg, &in_fmt) < 0)
        return usage_error("convert", "unknown source format '%s' (vhd, raw)", optarg);
      break;
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
    case OPT_BLOCK_SIZE:
      if ((r = parse_size_arg("convert", "block size", optarg, &bs)) != 0)
        return r;
      /* The values vhdimg create accepts (the engine's limits). */
      if (bs < VHD_MIN_BLOCK_SIZE || bs > VHD_MAX_BLOCK_SIZE || (bs & (bs - 1)))
        return usage_error("convert", "block size '%s' is not a power of two from 512 to 256M",
                           optarg);
      break;
    case OPT_EXACT:
      exact = true;
      break;
    case OPT_ALIGN:
      if ((r = parse_size_arg("convert", "alignment", optarg, &align)) != 0)
        return r;
      if (align == 0 || align % VHD_SECTOR_SIZE)
        return usage_error("convert", "alignment '%s' is not a multiple of 512", optarg);
      break;
    case 'p':
      show_progress = true;
      break;
    case OPT_JSON:
      json = true;
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
  if (bs && o.fmt != OUT_DYNAMIC)
    return usage_error("convert", "--block-size is only for -O dynamic");
  if (exact && o.fmt == OUT_RAW)
    return usage_error("convert", "--exact is only for -O fixed or dynamic (a raw output "
                                  "always has the exact size)");
  const char *src_path = argv[optind], *dst_path = argv[optind + 1];
  o.path = dst_path;
  if (same_file(src_path, o.path)) {
    print_error("%s: source and destination are the same file", o.path);
    return VHDIMG_EXIT_FAILURE;
  }
  show_progress = show_progress && isatty(STDERR_FILENO);

  struct vhd_err err = {{0}};
  struct source src;
  r = source_open(&src, src_path, in_fmt, "use -f raw to convert a raw disk image", &err);
  if (r < 0) {
    print_vhd_error(r, &err);
    source_close(&src);
    return VHDIMG_EXIT_FAILURE;
  }

  /* Replacing a parent of the source would change what the source (and
   * every other child of that parent) reads, for good. */
  for (vhd_t *p = src.vhd ? vhd_parent(src.vhd) : NULL; p; p = vhd_parent(p)) {
    if (same_file(vhd_path(p), o.path)) {
      print_error("%s: the destination is %s, a parent of %s: converting over it would destroy "
                  "the chain's data",
                  o.path, vhd_path(p), src_path);
      source_close(&src);
      return VHDIMG_EXIT_FAILURE;
    }
  }

  struct run_list runs = {0};
  uint64_t size;
  if (output_size(&src, &o, align, &size) < 0) {
    source_close(&src);
    return VHDIMG_EXIT_FAILURE;
  }
  /* A VHD source's size is already a disk's; a raw one's is CHS-rounded
   * as vhdimg create rounds, unless asked to keep it. */
  exact = exact || align || src.fmt == SOURCE_VHD;
  r = source_data_runs(&src, &runs, &err);
  if (r < 0)
    goto out;
  r = out_open(&o, size, exact, (uint32_t)bs, &err);
  if (r < 0)
    goto out;
  r = copy_data(&src, &runs, &o, show_progress, &err);
  if (r < 0)
    goto out;
  r = out_commit(&o, &err);
  if (r == 0 && json)
    print_json(src_path, &o, dst_path);
  if (r == 0)
    warn_small_blocks(dst_path, (uint32_t)bs);

out:
  if (r < 0) {
    print_vhd_error(r, &err);
    out_abort(&o);
  }
  free(runs.runs);
  free(o.target);
  source_close(&src);
  return r < 0 ? VHDIMG_EXIT_FAILURE : VHDIMG_EXIT_OK;
}
