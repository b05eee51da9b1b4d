/* compare.c: `vhdimg compare`, whether two virtual disks (VHD, chains
 * resolved, or raw) hold the same bytes, like `qemu-img compare`.
 *
 * Only ranges that one side or the other may hold data in are read: where
 * both map as zero there is nothing to compare.  Images of different sizes are
 * equal when the part only the larger has reads as zeros. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "vhdimg.h"

#define COMPARE_EXIT_DIFFERENT 1
#define COMPARE_EXIT_ERROR 2
#define COMPARE_CHUNK (1024u * 1024)

void usage_compare(FILE *f) {
  fprintf(f,
          "Usage: vhdimg compare [-f vhd|raw] [-F vhd|raw] A B\n"
          "\n"
          "Compares the virtual disks of A and B, each a VHD image (a differencing\n"
          "chain is resolved) or with -f/-F raw a raw disk image.  Images of\n"
          "different sizes are equal when the rest of the larger reads as zeros.\n"
          "A file without a VHD footer is refused unless its -f/-F says raw.\n"
          "\n"
          "  -f, --format FMT         vhd or raw: how to read A (default: vhd)\n"
          "  -F, --second-format FMT  vhd or raw: how to read B (default: vhd)\n"
          "  -h, --help               show this help\n"
          "\n"
          "Exit status: 0 the images are identical, 1 they differ (the first\n"
          "differing byte's offset is printed), 2 bad arguments or an error.\n");
}

struct side {
  struct source src;
  struct run_list runs;
  uint8_t *buf;
};

/* Reads [off, off+len) of one side; beyond its end it reads as zeros. */
static int read_side(struct side *s, uint64_t off, size_t len, struct vhd_err *err) {
  size_t have = off >= s->src.size ? 0 : (size_t)MIN((uint64_t)len, s->src.size - off);
  memset(s->buf + have, 0, len - have);
  return have ? source_read(&s->src, s->buf, off, have, err) : 0;
}

/* Compares [off, end); returns 1 and sets *diff at the first differing byte,
 * 0 when equal, or a negative errno. */
static int compare_range(struct side *a, struct side *b, uint64_t off, uint64_t end,
                         uint64_t *diff, struct vhd_err *err) {
  while (off < end) {
    size_t len = (size_t)MIN((uint64_t)COMPARE_CHUNK, end - off);
    int r = read_side(a, off, len, err);
    if (r < 0 || (r = read_side(b, off, len, err)) < 0)
      return r;
    if (memcmp(a->buf, b->buf, len) != 0) {
      size_t i = 0;
      while (a->buf[i] == b->buf[i])
        i++;
      *diff = off + i;
      return 1;
    }
    off += len;
  }
  return 0;
}

/* Walks the union of both sides' data runs in order. */
static int compare_data(struct side *a, struct side *b, uint64_t *diff, struct vhd_err *err) {
  const struct run_list *la = &a->runs, *lb = &b->runs;
  size_t i = 0, j = 0;
  while (i < la->n || j < lb->n) {
    const struct data_run *next;
    bool take_a = j == lb->n || (i < la->n && la->runs[i].off <= lb->runs[j].off);
    next = take_a ? &la->runs[i++] : &lb->runs[j++];
    uint64_t start = next->off, end = next->off + next->len;
    /* Swallow every run that overlaps or touches this one. */
    for (;;) {
      if (i < la->n && la->runs[i].off <= end)
        end = MAX(end, la->runs[i].off + la->runs[i].len), i++;
      else if (j < lb->n && lb->runs[j].off <= end)
        end = MAX(end, lb->runs[j].off + lb->runs[j].len), j++;
      else
        break;
    }
    int r = compare_range(a, b, start, end, diff, err);
    if (r != 0)
      return r;
  }
  return 0;
}

static int open_side(struct side *s, const char *path, enum source_format fmt,
                     const char *hint, struct vhd_err *err) {
  int r = source_open(&s->src, path, fmt, hint, err);
  if (r == 0)
    r = source_data_runs(&s->src, &s->runs, err);
  if (r == 0 && !(s->buf = malloc(COMPARE_CHUNK))) {
    snprintf(err->msg, sizeof err->msg, "out of memory");
    r = -ENOMEM;
  }
  return r;
}

static void close_side(struct side *s) {
  source_close(&s->src);
  free(s->runs.runs);
  free(s->buf);
}

int cmd_compare(int argc, char **argv) {
  static const struct option longopts[] = {
      {"format", required_argument, NULL, 'f'},
      {"second-format", required_argument, NULL, 'F'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  enum source_format fa = SOURCE_AUTO, fb = SOURCE_AUTO;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":f:F:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'f':
    case 'F':
      if (parse_source_format(optarg, c == 'f' ? &fa : &fb) < 0)
        return usage_error("compare", "unknown format '%s' (vhd, raw)", optarg);
      break;
    case 'h':
      usage_compare(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("compare", c, argv);
    }
  }
  if (argc - optind < 2)
    return usage_error("compare", "missing %s", argc - optind < 1 ? "A and B" : "B");
  if (argc - optind > 2)
    return usage_error("compare", "unexpected argument '%s'", argv[optind + 2]);

  struct side a = {0}, b = {0};
  struct vhd_err err = {{0}};
  uint64_t diff = 0;
  a.src.fd = b.src.fd = -1;
  int r = open_side(&a, argv[optind], fa, "use -f raw to compare it as a raw disk image", &err);
  if (r == 0)
    r = open_side(&b, argv[optind + 1], fb, "use -F raw to compare it as a raw disk image",
                  &err);
  if (r == 0) {
    if (a.src.size != b.src.size)
      printf("Warning: image sizes differ (%s: %" PRIu64 " bytes, %s: %" PRIu64
             " bytes); the rest of the larger must read as zeros\n",
             a.src.path, a.src.size, b.src.path, b.src.size);
    r = compare_data(&a, &b, &diff, &err);
  }
  close_side(&a);
  close_side(&b);
  if (r < 0) {
    fflush(stdout);
    print_vhd_error(r, &err);
    return COMPARE_EXIT_ERROR;
  }
  if (r > 0) {
    printf("Content mismatch at offset %" PRIu64 "!\n", diff);
    return COMPARE_EXIT_DIFFERENT;
  }
  printf("Images are identical.\n");
  return VHDIMG_EXIT_OK;
}
