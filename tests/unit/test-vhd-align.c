/* Where the engine places new blocks: with a block size of 512 KiB or more
 * (a multiple of 4 KiB), every block it allocates in new space has its data
 * (the bytes after the sector bitmap) on a 4 KiB boundary of the file, so
 * that a 4 KiB guest write covers one page of the file, not two halves the
 * kernel must read first.  Smaller blocks stay back to back: the bytes an
 * aligned block skips would cost them too much of the file.
 *
 * Dynamic and differencing images of each block size get blocks written in
 * random order over two opens (the first block after each open is where a
 * gap can appear), then the file is read by the specification alone (footer
 * -> header -> BAT): the placement of every block, the content against a
 * model, a valid footer ending the file, and a clean vhd_check.  An image
 * whose existing block sits unaligned (laid out here as QEMU lays it out)
 * keeps that block where it is; only new blocks are aligned.  Blocks that
 * vhd_compact moves down into freed places are aligned as well. */
#include "config.h"

#include <string.h>

#include "testutil.h"

#define SECTOR 512u
#define KiB 1024u
#define MiB (1024u * 1024u)
#define ALIGN 4096u
#define ALIGN_MIN_BLOCK (512u * KiB)
/* Whether the engine aligns blocks of this size. */
#define ALIGNED(bs) ((bs) % ALIGN == 0 && (bs) >= ALIGN_MIN_BLOCK)

static void put_be32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* What the file says, read without the engine. */
struct layout {
  uint64_t file_size, bat_off;
  uint32_t entries, block_size, bitmap_area;
  uint32_t *bat; /* sectors, host order */
};

static void read_layout(const char *path, struct layout *l) {
  uint8_t footer[SECTOR], copy[SECTOR], header[1024];
  l->file_size = t_file_size(path);
  T_ASSERT(l->file_size % SECTOR == 0, "%s: file size %llu is not a whole number of sectors",
           path, (unsigned long long)l->file_size);
  t_pread_file(path, footer, sizeof footer, l->file_size - SECTOR);
  T_ASSERT(memcmp(footer, "conectix", 8) == 0, "%s: no footer at EOF-512", path);
  uint32_t sum = 0;
  for (unsigned i = 0; i < SECTOR; i++)
    sum += i >= 64 && i < 68 ? 0 : footer[i];
  T_ASSERT(t_be32(footer + 64) == ~sum, "%s: the footer at EOF-512 has a bad checksum", path);
  t_pread_file(path, copy, sizeof copy, 0);
  T_ASSERT(memcmp(copy, footer, SECTOR) == 0, "%s: the footer copy at 0 differs", path);
  t_pread_file(path, header, sizeof header, t_be64(footer + 16));
  T_ASSERT(memcmp(header, "cxsparse", 8) == 0, "%s: no dynamic header", path);
  l->bat_off = t_be64(header + 16);
  l->entries = t_be32(header + 28);
  l->block_size = t_be32(header + 32);
  l->bitmap_area = ((l->block_size / SECTOR + 7) / 8 + SECTOR - 1) / SECTOR * SECTOR;
  uint8_t *raw = t_xmalloc((size_t)l->entries * 4);
  t_pread_file(path, raw, (size_t)l->entries * 4, l->bat_off);
  l->bat = t_xmalloc((size_t)l->entries * 4);
  for (uint32_t i = 0; i < l->entries; i++)
    l->bat[i] = t_be32(raw + 4 * i);
  free(raw);
}

static uint64_t data_offset(const struct layout *l, uint32_t blk) {
  return (uint64_t)l->bat[blk] * SECTOR + l->bitmap_area;
}

static int off_cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Every block not listed in keep (blocks the engine did not place) is
 * placed by the rule; the last block ends right before the footer. */
static void check_placement(const char *path, const struct layout *l, int64_t keep_blk,
                            uint64_t keep_off) {
  uint64_t span = (uint64_t)l->bitmap_area + l->block_size;
  uint64_t *offs = t_xmalloc(((size_t)l->entries + 1) * sizeof *offs);
  size_t n = 0;
  for (uint32_t i = 0; i < l->entries; i++) {
    if (l->bat[i] == 0xFFFFFFFFu)
      continue;
    uint64_t off = (uint64_t)l->bat[i] * SECTOR;
    offs[n++] = off;
    if (i == keep_blk) {
      T_ASSERT(off == keep_off, "%s: existing block %u moved from %llu to %llu", path, i,
               (unsigned long long)keep_off, (unsigned long long)off);
      continue;
    }
    if (ALIGNED(l->block_size))
      T_ASSERT(data_offset(l, i) % ALIGN == 0,
               "%s (block size %u): block %u's data at %llu is not 4 KiB-aligned", path,
               l->block_size, i, (unsigned long long)data_offset(l, i));
  }
  T_ASSERT(n > 0, "%s: no block allocated", path);
  qsort(offs, n, sizeof *offs, off_cmp);
  for (size_t k = 1; k < n; k++) {
    uint64_t gap = offs[k] - (offs[k - 1] + span);
    T_ASSERT(offs[k] >= offs[k - 1] + span, "%s: blocks at %llu and %llu overlap", path,
             (unsigned long long)offs[k - 1], (unsigned long long)offs[k]);
    /* Aligned blocks skip only what alignment needs; others skip nothing. */
    uint64_t most = ALIGNED(l->block_size) ? ALIGN - SECTOR : 0;
    T_ASSERT(gap <= most, "%s (block size %u): %llu bytes between blocks at %llu and %llu", path,
             l->block_size, (unsigned long long)gap, (unsigned long long)offs[k - 1],
             (unsigned long long)offs[k]);
  }
  T_ASSERT(offs[n - 1] + span == l->file_size - SECTOR,
           "%s: the file does not end right after its last block (at %llu) with the footer "
           "(at %llu)",
           path, (unsigned long long)(offs[n - 1] + span),
           (unsigned long long)(l->file_size - SECTOR));
  free(offs);
}

static void check_content(const char *path, const uint8_t *model, uint64_t size) {
  struct vhd_err err = {{0}};
  vhd_t *vhd = t_open(path, true);
  uint8_t *got = t_xmalloc(size);
  T_OK(vhd_read(vhd, got, 0, size, &err), &err, "vhd_read");
  for (uint64_t i = 0; i < size; i++)
    T_ASSERT(got[i] == model[i], "%s: byte %llu reads 0x%02x, expected 0x%02x", path,
             (unsigned long long)i, got[i], model[i]);
  T_OK(vhd_close(vhd, &err), &err, "vhd_close");
  free(got);
}

/* Writes a random piece of each block of [first, first + n) in random
 * order, over two opens. */
static void write_blocks(const char *path, uint8_t *model, uint32_t bs, uint32_t first,
                         uint32_t n) {
  uint32_t *order = t_xmalloc((size_t)n * sizeof *order);
  for (uint32_t i = 0; i < n; i++)
    order[i] = first + i;
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = (uint32_t)t_below(i), x = order[i - 1];
    order[i - 1] = order[j];
    order[j] = x;
  }
  uint8_t *buf = t_xmalloc(bs);
  struct vhd_err err = {{0}};
  for (uint32_t half = 0; half < 2; half++) {
    vhd_t *vhd = t_open(path, false);
    for (uint32_t k = half ? n / 2 : 0; k < (half ? n : n / 2); k++) {
      uint32_t spb = bs / SECTOR;
      uint32_t s = (uint32_t)t_below(spb), len = (uint32_t)t_range(1, spb - s);
      uint64_t off = (uint64_t)order[k] * bs + (uint64_t)s * SECTOR;
      t_fill_random(buf, (size_t)len * SECTOR);
      T_OK(vhd_write(vhd, buf, off, (size_t)len * SECTOR, 0, &err), &err, "vhd_write");
      memcpy(model + off, buf, (size_t)len * SECTOR);
    }
    T_OK(vhd_close(vhd, &err), &err, "vhd_close");
  }
  free(buf);
  free(order);
}

static void check_image(const char *path, const uint8_t *model, uint64_t size, int64_t keep_blk,
                        uint64_t keep_off) {
  struct layout l;
  read_layout(path, &l);
  check_placement(path, &l, keep_blk, keep_off);
  check_content(path, model, size);
  int c = t_check(path);
  T_ASSERT(c == 0, "%s: vhd_check found 0x%x", path, c);
  free(l.bat);
}

static void case_new(enum vhd_type type, uint32_t bs) {
  const uint32_t nblocks = bs >= MiB ? 6 : 24;
  uint64_t size = (uint64_t)nblocks * bs;
  uint8_t *model = t_xcalloc(1, size);
  const char *tn = type == VHD_TYPE_DYNAMIC ? "dynamic" : "differencing";
  char path[4096];
  snprintf(path, sizeof path, "%s", t_path(t_fmt("%s-%u.vhd", tn, bs)));
  if (type == VHD_TYPE_DIFFERENCING) {
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", t_path(t_fmt("parent-%u.vhd", bs)));
    t_create(parent, VHD_TYPE_DYNAMIC, size, bs, true, NULL);
    /* The parent holds the first half, the child writes over all of it. */
    write_blocks(parent, model, bs, 0, nblocks / 2);
    check_image(parent, model, size, -1, 0);
    t_create(path, VHD_TYPE_DIFFERENCING, size, bs, true, parent);
  } else {
    t_create(path, VHD_TYPE_DYNAMIC, size, bs, true, NULL);
  }
  write_blocks(path, model, bs, 0, nblocks);
  check_image(path, model, size, -1, 0);
  printf("%s, block size %u: %u blocks placed by the rule\n", tn, bs, nblocks);
  free(model);
}

/* An empty dynamic image of nblocks blocks named NAME-BS.vhd in the test
 * directory (its path in path), and a zeroed model of its content. */
static uint8_t *new_dynamic(const char *name, uint32_t bs, uint32_t nblocks, char *path,
                            size_t path_size) {
  uint64_t size = (uint64_t)nblocks * bs;
  snprintf(path, path_size, "%s", t_path(t_fmt("%s-%u.vhd", name, bs)));
  t_create(path, VHD_TYPE_DYNAMIC, size, bs, true, NULL);
  return t_xcalloc(1, size);
}

/* One block laid out by hand where the footer was, data right after its
 * bitmap as QEMU puts it; the engine must leave it there. */
static void case_existing(uint32_t bs) {
  const uint32_t nblocks = 8;
  uint64_t size = (uint64_t)nblocks * bs;
  char path[4096];
  uint8_t *model = new_dynamic("existing", bs, nblocks, path, sizeof path);
  struct layout l;
  read_layout(path, &l);
  uint64_t off = l.file_size - SECTOR, span = (uint64_t)l.bitmap_area + bs;
  T_ASSERT((off + l.bitmap_area) % ALIGN != 0,
           "block size %u: the first block's data would be aligned anyway (at %llu): this "
           "case tests nothing",
           bs, (unsigned long long)(off + l.bitmap_area));
  uint8_t footer[SECTOR];
  t_pread_file(path, footer, sizeof footer, off);
  uint8_t *blk = t_xmalloc(span);
  memset(blk, 0xFF, l.bitmap_area);
  uint32_t b = 3;
  t_fill_random(blk + l.bitmap_area, bs);
  memcpy(model + (uint64_t)b * bs, blk + l.bitmap_area, bs);
  t_pwrite_file(path, blk, span, off);
  t_pwrite_file(path, footer, sizeof footer, off + span);
  uint8_t e[4];
  put_be32(e, (uint32_t)(off / SECTOR));
  t_pwrite_file(path, e, sizeof e, l.bat_off + 4 * b);
  free(blk);
  free(l.bat);
  T_ASSERT(t_check(path) == 0, "%s: the hand-made image does not check clean", path);

  write_blocks(path, model, bs, 0, nblocks);
  check_image(path, model, size, b, off);
  printf("existing unaligned block (block size %u) kept at %llu, new blocks aligned\n", bs,
         (unsigned long long)off);
  free(model);
}

/* vhd_compact moves blocks from the end into the places of blocks of
 * zeros it frees: they land aligned too, and the file stays packed. */
static void case_compact(uint32_t bs) {
  const uint32_t nblocks = 12;
  uint64_t size = (uint64_t)nblocks * bs;
  char path[4096];
  uint8_t *model = new_dynamic("compact", bs, nblocks, path, sizeof path);
  write_blocks(path, model, bs, 0, nblocks);
  /* Blocks 2 and 7 (wherever they lie) become all zeros. */
  uint8_t *zero = t_xcalloc(1, bs);
  struct vhd_err err = {{0}};
  vhd_t *vhd = t_open(path, false);
  for (uint32_t b = 2; b < nblocks; b += 5) {
    T_OK(vhd_write(vhd, zero, (uint64_t)b * bs, bs, 0, &err), &err, "vhd_write zeros");
    memset(model + (uint64_t)b * bs, 0, bs);
  }
  T_OK(vhd_close(vhd, &err), &err, "vhd_close");
  free(zero);
  struct vhd_compact_opts o = {0};
  struct vhd_compact_result res;
  T_OK(vhd_compact(path, &o, &res, &err), &err, "vhd_compact");
  T_ASSERT(res.blocks_freed == 2, "%s: %u blocks freed, expected 2", path, res.blocks_freed);
  check_image(path, model, size, -1, 0);
  printf("compact (block size %u): %u blocks moved, placed by the rule\n", bs,
         res.blocks_moved);
  free(model);
}

int main(void) {
  t_init("test-vhd-align");
  static const uint32_t sizes[] = {512, 2 * KiB, 4 * KiB, 64 * KiB, 512 * KiB, 2 * MiB};
  for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    case_new(VHD_TYPE_DYNAMIC, sizes[i]);
    case_new(VHD_TYPE_DIFFERENCING, sizes[i]);
  }
  case_existing(512 * KiB);
  case_existing(2 * MiB);
  case_compact(64 * KiB);
  case_compact(512 * KiB);
  return 0;
}
