/* Reads of blocks written piecemeal: sectors whose bits are set, separated
 * by short runs of clear bits, are read from the file in one piece, and the
 * clear runs' file bytes, which may hold anything, never reach the reader.
 *
 * A dynamic image (2 MiB blocks) gets, by the engine, one block with 4 KiB
 * of data every 8 KiB, one with 4 KiB every 64 KiB, and one whose gaps sit
 * on either side of the limit the engine documents (16 KiB: merged; 16.5
 * KiB: not).  Then every clear sector of those blocks is filled in the file
 * with a marker byte, bypassing the engine, as a foreign writer or a trim
 * that left the old data may leave it.  Read back through the engine:
 *   - every byte is the model's: data where written, zeros elsewhere, never
 *     the marker; under VHD_READ_SKIP_ZERO a ZERO run's bytes are zero or
 *     untouched, never the marker;
 *   - the number of data reads reaching the file is one per group of runs
 *     the limit joins: 1 for the 8 KiB pattern (not 256), 32 for the
 *     64 KiB one (holes that large are not read).
 * A differencing child over a parent full of other bytes, with the same
 * pattern and the same marker in its clear sectors, reads the parent's
 * bytes there, and reads its own file once for the 8 KiB pattern. */
#include "config.h"

#include <string.h>

#include "testutil.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define BLOCK (2 * MiB)
#define SIZE (4 * BLOCK)
#define MARK 0xA5
#define GAP_LIMIT (16 * KiB) /* vhd.h: clear runs up to this are read over */

static uint8_t model[SIZE];
static bool written[SIZE / 512];

/* Data reads on the file being watched, and the fd being watched (-1: any
 * read of `watch_len` bytes at `watch_off` names it). */
static int watch_fd = -1;
static uint64_t reads;
static uint64_t probe_off, probe_len;

static void count_read(void *opaque, enum t_io_op op, int fd, uint64_t len, uint64_t off) {
  (void)opaque;
  if (op != T_OP_READ)
    return;
  if (watch_fd < 0 && off == probe_off && len == probe_len)
    watch_fd = fd;
  else if (fd == watch_fd)
    reads++;
}

static void write_run(vhd_t *v, uint64_t off, uint32_t len) {
  uint8_t *b = t_xmalloc(len);
  t_fill_nonzero(b, len);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, b, off, len, 0, &err), &err, "write");
  memcpy(model + off, b, len);
  for (uint64_t s = off / 512; s < (off + len) / 512; s++)
    written[s] = true;
  free(b);
}

/* The pattern: block 0 every 8 KiB, block 1 every 64 KiB, block 2 with
 * gaps of exactly the limit (first half) and one sector more (second
 * half); block 3 stays unallocated. */
static void write_pattern(vhd_t *v) {
  for (uint64_t o = 0; o < BLOCK; o += 8 * KiB)
    write_run(v, o, 4 * KiB);
  for (uint64_t o = 0; o < BLOCK; o += 64 * KiB)
    write_run(v, BLOCK + o, 4 * KiB);
  uint64_t b2 = 2 * BLOCK, half = BLOCK / 2, o;
  for (o = 0; o + 512 <= half; o += 512 + GAP_LIMIT)
    write_run(v, b2 + o, 512);
  for (o = half; o + 512 <= BLOCK; o += 512 + GAP_LIMIT + 512)
    write_run(v, b2 + o, 512);
}

/* The rule, from the written sectors: a read of a whole block reads the
 * file once per group of set runs, a group ending at a clear run longer
 * than the limit (or at the block's end). */
static void expected_reads(uint64_t expect[4]) {
  for (uint32_t blk = 0; blk < 4; blk++) {
    uint64_t groups = 0, clear = 0;
    bool in_group = false;
    for (uint32_t s = blk * (BLOCK / 512); s < (blk + 1) * (BLOCK / 512); s++) {
      if (written[s]) {
        if (!in_group || clear * 512 > GAP_LIMIT)
          groups++;
        in_group = true;
        clear = 0;
      } else {
        clear++;
      }
    }
    expect[blk] = groups;
  }
  /* What the rule means for these patterns. */
  T_ASSERT(expect[0] == 1 && expect[1] == 32 && expect[2] > 1 && expect[3] == 0,
           "the expected counts are %llu %llu %llu %llu", (unsigned long long)expect[0],
           (unsigned long long)expect[1], (unsigned long long)expect[2],
           (unsigned long long)expect[3]);
}

struct block_at {
  uint64_t block_data[4]; /* file offset of each block's data, 0: none */
};

static int find_blocks(void *opaque, const struct vhd_extent *e) {
  struct block_at *b = opaque;
  if ((e->flags & VHD_MAP_DATA) && e->depth == 0) {
    uint32_t blk = (uint32_t)(e->offset / BLOCK);
    b->block_data[blk] = e->file_offset - e->offset % BLOCK;
  }
  return 0;
}

/* Fills the file bytes of every sector whose bit is clear, inside the
 * allocated blocks, with MARK. */
static void plant_marks(const char *path) {
  vhd_t *v = t_open(path, true);
  struct vhd_err err = {{0}};
  struct block_at b = {{0}};
  T_OK(vhd_map(v, 0, SIZE, find_blocks, &b, &err), &err, "vhd_map");
  T_OK(vhd_close(v, &err), &err, "close");
  uint8_t mark[512];
  memset(mark, MARK, sizeof mark);
  for (uint32_t s = 0; s < SIZE / 512; s++) {
    uint64_t data = b.block_data[s / (BLOCK / 512)];
    if (data && !written[s])
      t_pwrite_file(path, mark, sizeof mark, data + (uint64_t)s * 512 % BLOCK);
  }
}

struct runs {
  const uint8_t *buf, *want;
  uint64_t base;
  const char *what;
};

static int check_run(void *opaque, const struct vhd_extent *e) {
  struct runs *r = opaque;
  for (uint64_t i = e->offset; i < e->offset + e->length; i++) {
    uint8_t got = r->buf[i - r->base];
    if (e->flags & VHD_MAP_DATA)
      T_ASSERT(got == r->want[i], "%s: DATA byte %llu reads 0x%02x, want 0x%02x", r->what,
               (unsigned long long)i, got, r->want[i]);
    else
      T_ASSERT(got == 0 || got == 0xEE, "%s: ZERO byte %llu holds 0x%02x", r->what,
               (unsigned long long)i, got);
  }
  return 0;
}

/* Reads every block whole and checks bytes and read counts (counts only
 * where expect is given). */
static void check_reads(const char *path, const uint8_t *want, const uint64_t *expect,
                        const char *what) {
  vhd_t *v = t_open(path, true);
  struct vhd_err err = {{0}};
  uint8_t *buf = t_xmalloc(BLOCK);
  /* Load every bitmap first: the counts are of data reads alone.  The
   * first read names the file: block 0's first 4 KiB, all of it data. */
  watch_fd = -1;
  probe_off = 0;
  probe_len = 0;
  struct block_at b = {{0}};
  T_OK(vhd_map(v, 0, SIZE, find_blocks, &b, &err), &err, "vhd_map");
  probe_off = b.block_data[0];
  probe_len = 4 * KiB;
  t_set_io_before_hook(count_read, NULL);
  T_OK(vhd_read(v, buf, 0, 4 * KiB, &err), &err, "probe read");
  T_ASSERT(watch_fd >= 0, "%s: the probe read did not reach the file", what);
  for (uint32_t blk = 0; blk < SIZE / BLOCK; blk++) {
    const char *w = t_fmt("%s: block %u", what, blk);
    reads = 0;
    T_OK(vhd_read(v, buf, (uint64_t)blk * BLOCK, BLOCK, &err), &err, w);
    if (expect)
      T_ASSERT(reads == expect[blk], "%s: %llu data reads, expected %llu", w,
               (unsigned long long)reads, (unsigned long long)expect[blk]);
    for (uint32_t i = 0; i < BLOCK; i++)
      T_ASSERT(buf[i] == want[(uint64_t)blk * BLOCK + i], "%s: byte %llu reads 0x%02x, want 0x%02x",
               w, (unsigned long long)blk * BLOCK + i, buf[i], want[(uint64_t)blk * BLOCK + i]);
    memset(buf, 0xEE, BLOCK);
    struct runs r = {.buf = buf, .want = want, .base = (uint64_t)blk * BLOCK, .what = w};
    T_OK(vhd_read_map(v, buf, (uint64_t)blk * BLOCK, BLOCK, VHD_READ_SKIP_ZERO, check_run, &r,
                      &err),
         &err, w);
  }
  /* Unaligned ranges across the patterns: the same bytes. */
  for (int k = 0; k < 200; k++) {
    uint64_t off = t_below(SIZE - 1);
    uint64_t room = SIZE - off < BLOCK ? SIZE - off : BLOCK;
    size_t len = (size_t)t_range(1, room);
    const char *w = t_fmt("%s: read at %llu+%zu", what, (unsigned long long)off, len);
    T_OK(vhd_read(v, buf, off, len, &err), &err, w);
    for (size_t i = 0; i < len; i++)
      T_ASSERT(buf[i] == want[off + i], "%s: byte %llu reads 0x%02x, want 0x%02x", w,
               (unsigned long long)(off + i), buf[i], want[off + i]);
  }
  t_set_io_before_hook(NULL, NULL);
  free(buf);
  T_OK(vhd_close(v, &err), &err, "close");
}

int main(void) {
  t_init("test-vhd-read-coalesce");
  struct vhd_err err = {{0}};
  uint64_t expect[4];

  /* A dynamic image. */
  char dyn[4096];
  snprintf(dyn, sizeof dyn, "%s", t_path("dynamic.vhd"));
  t_create(dyn, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  vhd_t *v = t_open(dyn, false);
  write_pattern(v);
  T_OK(vhd_close(v, &err), &err, "close");
  expected_reads(expect);
  plant_marks(dyn);
  check_reads(dyn, model, expect, "dynamic");

  /* A differencing child over a parent full of other bytes. */
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", t_path("parent.vhd"));
  char child[4096];
  snprintf(child, sizeof child, "%s", t_path("child.vhd"));
  static uint8_t parent_bytes[SIZE], view[SIZE];
  t_fill_nonzero(parent_bytes, SIZE);
  t_create(parent, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  v = t_open(parent, false);
  T_OK(vhd_write(v, parent_bytes, 0, SIZE, 0, &err), &err, "parent write");
  T_OK(vhd_close(v, &err), &err, "close");
  t_create(child, VHD_TYPE_DIFFERENCING, SIZE, BLOCK, true, parent);
  memset(model, 0, sizeof model);
  memset(written, 0, sizeof written);
  v = t_open(child, false);
  write_pattern(v);
  T_OK(vhd_close(v, &err), &err, "close");
  expected_reads(expect);
  plant_marks(child);
  for (uint32_t s = 0; s < SIZE / 512; s++)
    memcpy(view + (uint64_t)s * 512, written[s] ? model + (uint64_t)s * 512
                                                : parent_bytes + (uint64_t)s * 512, 512);
  /* The child's own reads: as for the dynamic image; block 3 is the
   * parent's alone. */
  check_reads(child, view, expect, "differencing");
  printf("PASS: piecemeal blocks read in one piece where gaps are short, never the file's bytes "
         "of clear sectors\n");
  return 0;
}
