/* The bytes a sector write leaves on disk, read with the VHD specification
 * alone (no engine helper): footer at EOF-512 -> dynamic header -> BAT entry
 * -> the block's sector bitmap and data.  The bit order inside a bitmap byte
 * is what every other test can miss, as long as the engine reads back what
 * it wrote: the specification puts sector s at bit 0x80 >> (s % 8) of byte
 * s / 8, most significant bit first.
 *
 * Each case writes one sector of a fresh dynamic image (default 2 MiB
 * blocks, and 64 KiB blocks) and expects exactly one bitmap bit set, at the
 * byte and bit written out literally below, and the sector's data right
 * after the bitmap at its place in the block. */
#include "config.h"

#include <string.h>

#include "testutil.h"

#define SECTOR 512u
#define KiB 1024u
#define MiB (1024u * 1024u)

struct bitmap_case {
  uint32_t block_size; /* 0: the default (2 MiB) */
  uint64_t sector;     /* virtual sector written */
  uint32_t block;      /* the block that holds it */
  uint32_t byte;       /* the bitmap byte that must be set ... */
  uint8_t value;       /* ... to exactly this */
};

static const struct bitmap_case cases[] = {
    {0, 0, 0, 0, 0x80},
    {0, 7, 0, 0, 0x01},
    {0, 8, 0, 1, 0x80},
    {0, 13, 0, 1, 0x04},
    {0, 4095, 0, 511, 0x01},
    {0, 4096 + 2, 1, 0, 0x20},
    {64 * KiB, 5, 0, 0, 0x04},
    {64 * KiB, 128 + 9, 1, 1, 0x40},
};

static void check_case(const struct bitmap_case *c, unsigned n) {
  const char *path = t_path(t_fmt("case%u.vhd", n));
  t_create(path, VHD_TYPE_DYNAMIC, 16 * MiB, c->block_size, true, NULL);

  uint8_t data[SECTOR];
  t_fill_nonzero(data, sizeof data);
  struct vhd_err err = {{0}};
  vhd_t *vhd = t_open(path, false);
  T_OK(vhd_write(vhd, data, c->sector * SECTOR, SECTOR, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(vhd, &err), &err, "vhd_close");

  uint8_t footer[SECTOR], header[1024];
  uint64_t fsize = t_file_size(path);
  t_pread_file(path, footer, sizeof footer, fsize - SECTOR);
  T_ASSERT(memcmp(footer, "conectix", 8) == 0, "case %u: no footer at EOF-512", n);
  T_ASSERT(t_be32(footer + 60) == VHD_TYPE_DYNAMIC, "case %u: footer disk type %u", n,
           t_be32(footer + 60));
  t_pread_file(path, header, sizeof header, t_be64(footer + 16));
  T_ASSERT(memcmp(header, "cxsparse", 8) == 0, "case %u: no dynamic header at %llu", n,
           (unsigned long long)t_be64(footer + 16));
  uint64_t bat_off = t_be64(header + 16);
  uint32_t entries = t_be32(header + 28), bs = t_be32(header + 32);
  T_ASSERT(bs == (c->block_size ? c->block_size : 2 * MiB), "case %u: block size %u", n, bs);
  T_ASSERT(c->block < entries, "case %u: block %u beyond %u BAT entries", n, c->block, entries);
  T_ASSERT(c->sector * SECTOR / bs == c->block, "case %u: sector %llu is not in block %u", n,
           (unsigned long long)c->sector, c->block);

  /* Only the written block is allocated. */
  uint8_t *bat = t_xmalloc((size_t)entries * 4);
  t_pread_file(path, bat, (size_t)entries * 4, bat_off);
  for (uint32_t i = 0; i < entries; i++)
    T_ASSERT((t_be32(bat + 4 * i) == 0xFFFFFFFFu) == (i != c->block),
             "case %u: BAT entry %u is 0x%08x", n, i, t_be32(bat + 4 * i));
  uint64_t block_off = (uint64_t)t_be32(bat + 4 * c->block) * SECTOR;
  free(bat);

  /* The bitmap: ceil(sectors per block / 8) bytes, padded to a sector. */
  uint32_t bm_len = (bs / SECTOR + 7) / 8;
  uint32_t bm_area = (bm_len + SECTOR - 1) / SECTOR * SECTOR;
  uint8_t *bm = t_xmalloc(bm_len);
  t_pread_file(path, bm, bm_len, block_off);
  for (uint32_t i = 0; i < bm_len; i++) {
    uint8_t want = i == c->byte ? c->value : 0;
    T_ASSERT(bm[i] == want,
             "case %u: sector %llu written: bitmap byte %u of block %u at %llu is 0x%02x, "
             "expected 0x%02x",
             n, (unsigned long long)c->sector, i, c->block, (unsigned long long)block_off,
             bm[i], want);
  }
  free(bm);

  uint8_t got[SECTOR];
  uint64_t in_block = c->sector * SECTOR % bs;
  t_pread_file(path, got, sizeof got, block_off + bm_area + in_block);
  T_ASSERT(memcmp(got, data, SECTOR) == 0,
           "case %u: sector %llu's data is not at %llu (bitmap %u bytes + %llu into the block)",
           n, (unsigned long long)c->sector,
           (unsigned long long)(block_off + bm_area + in_block), bm_area,
           (unsigned long long)in_block);
  printf("sector %llu (block size %u): bitmap byte %u = 0x%02x\n",
         (unsigned long long)c->sector, bs, c->byte, c->value);
}

int main(void) {
  t_init("test-vhd-bitmap-bytes");
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i], i);
  return 0;
}
