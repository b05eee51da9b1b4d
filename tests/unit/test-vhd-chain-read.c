/* test-vhd-chain-read: reads through a chain of differencing images, at
 * every alignment, against a model of who holds each sector.
 *
 * Three levels with different block sizes (base dynamic 2 KiB blocks, a
 * differencing middle of 8 KiB, a differencing top of 4 KiB), each written
 * at random (whole blocks, single sectors, odd bytes that make a
 * read-modify-write through the levels below) and trimmed here and there,
 * so the top has blocks it holds entirely, blocks and runs of blocks it does
 * not hold at all, blocks allocated with no sector held (trimmed), and
 * blocks held in part.  Then from every sector start, plus 1, 256 and 511
 * bytes, reads of 1 byte to 5 blocks must return the model's bytes:
 *   - vhd_read;
 *   - vhd_read_map with VHD_READ_SKIP_ZERO: runs cover the range in order,
 *     DATA where some level holds the sector, ZERO (buffer untouched, or
 *     zeroed) where none does;
 *   - vhd_read_map with VHD_READ_NOWAIT (everything is cached by then): the
 *     same bytes, or -EAGAIN;
 *   - vhd_map: each run's depth is the level that holds its sectors (-1
 *     for none) and its file offset points at those bytes in that level's
 *     file. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"

#define SIZE (64u * 1024)
#define SECTORS (SIZE / 512)
#define LEVELS 3

static const uint32_t block_sizes[LEVELS] = {2048, 8192, 4096};
static char paths[LEVELS][4096];
static bool held[LEVELS][SECTORS];
static uint8_t data[LEVELS][SIZE];
static uint8_t view[SIZE]; /* what the top reads */

/* The level holding sector s as seen from level top, or -1. */
static int holder(int top, uint32_t s) {
  for (int l = top; l >= 0; l--)
    if (held[l][s])
      return l;
  return -1;
}

static uint8_t seen_from(int top, uint32_t byte) {
  int l = holder(top, byte / 512);
  return l < 0 ? 0 : data[l][byte];
}

static void model_write(int l, uint64_t off, const uint8_t *buf, size_t len) {
  for (uint32_t s = (uint32_t)(off / 512); s < DIV_ROUND_UP(off + len, 512); s++)
    if (!held[l][s]) { /* the engine completes the sector from below */
      for (uint32_t b = s * 512; b < s * 512 + 512; b++)
        data[l][b] = seen_from(l, b);
      held[l][s] = true;
    }
  memcpy(data[l] + off, buf, len);
}

static void write_level(vhd_t *v, int l, uint64_t off, size_t len) {
  uint8_t buf[3 * 8192];
  struct vhd_err err = {{0}};
  t_fill_nonzero(buf, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, t_fmt("level %d: vhd_write", l));
  model_write(l, off, buf, len);
}

static void trim_level(vhd_t *v, int l, uint64_t off, uint64_t len) {
  struct vhd_err err = {{0}};
  T_OK(vhd_trim(v, off, len, 0, &err), &err, t_fmt("level %d: vhd_trim", l));
  for (uint32_t s = (uint32_t)DIV_ROUND_UP(off, 512); s < (off + len) / 512; s++) {
    held[l][s] = false;
    memset(data[l] + (uint64_t)s * 512, 0, 512);
  }
}

static void build_chain(void) {
  for (int l = 0; l < LEVELS; l++) {
    snprintf(paths[l], sizeof paths[l], "%s", t_path(t_fmt("level%d.vhd", l)));
    if (l == 0)
      t_create(paths[l], VHD_TYPE_DYNAMIC, SIZE, block_sizes[l], true, NULL);
    else
      t_create(paths[l], VHD_TYPE_DIFFERENCING, 0, block_sizes[l], true, paths[l - 1]);
    vhd_t *v = t_open(paths[l], false);
    uint32_t bs = block_sizes[l];
    for (int i = 0; i < 14; i++) {
      switch (t_below(4)) {
      case 0: /* whole blocks */
        write_level(v, l, t_below(SIZE / bs - 1) * bs, bs * (size_t)t_range(1, 2));
        break;
      case 1: /* single sectors */
        write_level(v, l, t_below(SECTORS) * 512, 512);
        break;
      default: { /* odd bytes */
        size_t len = (size_t)t_range(1, 3000);
        write_level(v, l, t_below(SIZE - len + 1), len);
      }
      }
    }
    /* Top: block 3 held entirely, blocks 8-11 never touched (a run for the
     * parent), block 12 allocated then trimmed (allocated, nothing held). */
    if (l == LEVELS - 1) {
      trim_level(v, l, 8 * (uint64_t)bs, 4 * (uint64_t)bs);
      write_level(v, l, 3 * (uint64_t)bs, bs);
      trim_level(v, l, 12 * (uint64_t)bs, bs);
      write_level(v, l, 12 * (uint64_t)bs + 512, 1024);
      trim_level(v, l, 12 * (uint64_t)bs + 512, 1024);
    } else {
      trim_level(v, l, t_below(SIZE / 2), t_range(512, 4096));
    }
    struct vhd_err err = {{0}};
    T_OK(vhd_close(v, &err), &err, "vhd_close");
  }
  for (uint32_t b = 0; b < SIZE; b++)
    view[b] = seen_from(LEVELS - 1, b);
}

struct runs {
  uint64_t next;     /* where the next run must start */
  const uint8_t *buf;
  uint64_t base;     /* the read's offset */
  const char *what;
};

static int check_run(void *opaque, const struct vhd_extent *e) {
  struct runs *r = opaque;
  T_ASSERT(e->offset == r->next, "%s: run at %llu, expected %llu", r->what,
           (unsigned long long)e->offset, (unsigned long long)r->next);
  for (uint64_t b = e->offset; b < e->offset + e->length; b++) {
    int h = holder(LEVELS - 1, (uint32_t)(b / 512));
    if (e->flags & VHD_MAP_ZERO) {
      T_ASSERT(h < 0, "%s: byte %llu in a ZERO run, but level %d holds it", r->what,
               (unsigned long long)b, h);
      /* Untouched, or zeroed between data read in one piece. */
      T_ASSERT(r->buf[b - r->base] == 0xEE || r->buf[b - r->base] == 0,
               "%s: byte %llu of a ZERO run holds 0x%02x", r->what, (unsigned long long)b,
               r->buf[b - r->base]);
    } else {
      T_ASSERT(h >= 0, "%s: byte %llu in a DATA run, but no level holds it", r->what,
               (unsigned long long)b);
      T_ASSERT(r->buf[b - r->base] == view[b], "%s: byte %llu reads %u, the model has %u",
               r->what, (unsigned long long)b, r->buf[b - r->base], view[b]);
    }
  }
  r->next = e->offset + e->length;
  return 0;
}

static int fds[LEVELS];

static int check_map(void *opaque, const struct vhd_extent *e) {
  struct runs *r = opaque;
  T_ASSERT(e->offset == r->next, "%s: map run at %llu, expected %llu", r->what,
           (unsigned long long)e->offset, (unsigned long long)r->next);
  for (uint64_t b = e->offset; b < e->offset + e->length; b += 512 - b % 512) {
    int h = holder(LEVELS - 1, (uint32_t)(b / 512));
    int depth = h < 0 ? -1 : LEVELS - 1 - h;
    T_ASSERT(e->depth == depth, "%s: byte %llu mapped at depth %d, held at depth %d", r->what,
             (unsigned long long)b, e->depth, depth);
    if (h >= 0) {
      uint8_t x;
      uint64_t at = e->file_offset + (b - e->offset);
      T_ASSERT(pread(fds[h], &x, 1, (off_t)at) == 1, "pread: %s", strerror(errno));
      T_ASSERT(x == view[b], "%s: byte %llu mapped to file offset %llu of level %d, which "
               "holds %u, not %u", r->what, (unsigned long long)b, (unsigned long long)at, h, x,
               view[b]);
    }
  }
  r->next = e->offset + e->length;
  return 0;
}

static void check_read(vhd_t *v, uint64_t off, size_t len) {
  static uint8_t buf[5 * 8192];
  struct vhd_err err = {{0}};
  const char *what = t_fmt("read at %llu length %zu", (unsigned long long)off, len);
  T_OK(vhd_read(v, buf, off, len, &err), &err, what);
  for (size_t i = 0; i < len; i++)
    T_ASSERT(buf[i] == view[off + i], "%s: byte %llu reads %u, the model has %u", what,
             (unsigned long long)(off + i), buf[i], view[off + i]);

  memset(buf, 0xEE, len);
  struct runs r = {.next = off, .buf = buf, .base = off, .what = what};
  T_OK(vhd_read_map(v, buf, off, len, VHD_READ_SKIP_ZERO, check_run, &r, &err), &err, what);
  T_ASSERT(r.next == off + len, "%s: the runs end at %llu", what, (unsigned long long)r.next);

  memset(buf, 0xEE, len);
  int rc = vhd_read_map(v, buf, off, len, VHD_READ_NOWAIT, NULL, NULL, &err);
  T_ASSERT(rc == 0 || rc == -EAGAIN, "%s, NOWAIT: %d (%s)", what, rc, t_strerr(rc));
  if (rc == 0)
    T_ASSERT(memcmp(buf, view + off, len) == 0, "%s, NOWAIT: other bytes", what);

  r = (struct runs){.next = off, .what = what};
  T_OK(vhd_map(v, off, len, check_map, &r, &err), &err, what);
  T_ASSERT(r.next == off + len, "%s: the map ends at %llu", what, (unsigned long long)r.next);
}

int main(void) {
  t_init("test-vhd-chain-read");
  build_chain();
  for (int l = 0; l < LEVELS; l++) {
    fds[l] = open(paths[l], O_RDONLY | O_CLOEXEC);
    T_ASSERT(fds[l] >= 0, "open %s: %s", paths[l], strerror(errno));
  }
  vhd_t *v = t_open(paths[LEVELS - 1], true);
  static const size_t lens[] = {1, 511, 512, 513, 1536, 4096, 4097, 8192 + 512 + 3, 20000, 40960};
  static const uint32_t shifts[] = {0, 1, 256, 511};
  unsigned reads = 0;
  for (uint32_t s = 0; s < SECTORS; s++)
    for (size_t i = 0; i < ARRAY_SIZE(shifts); i++)
      for (size_t j = 0; j < ARRAY_SIZE(lens); j++) {
        uint64_t off = (uint64_t)s * 512 + shifts[i];
        if (off + lens[j] > SIZE)
          continue;
        check_read(v, off, lens[j]);
        reads++;
      }
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  for (int l = 0; l < LEVELS; l++)
    close(fds[l]);
  printf("ok: %u reads through %d levels match the model\n", reads, LEVELS);
  return 0;
}
