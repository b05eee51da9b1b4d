/* test-vhd-layout.c: the engine must keep every byte it did not allocate.
 *
 * A generator written from the format notes (not from the engine's create
 * code: it is the oracle) makes spec-valid images with every placement the
 * format allows: fixed, dynamic and differencing (with a generated parent
 * and W2ru / W2ku / MacX locators, or none but the parent name); header,
 * BAT, locator data, blocks and unknown extensions in any order, with gaps
 * of junk between them, blocks not in BAT order, some 4 KiB-aligned,
 * trailing slack before the footer, the footer copy at 0 present or not,
 * locator data space in bytes or in sectors.  Pre-existing blocks have
 * random bitmaps and, in half of the images, random bytes under their clear
 * bits.
 *
 * Each image gets a random workload (allocating, sub-sector and unaligned
 * writes, write-zeroes with every flag, trims, flushes) against an
 * in-memory model, sometimes with hole punching failing as on a file
 * system without it, is closed and reopened, and then:
 *   - every byte of virtual content must match the model;
 *   - every byte of the file outside the blocks, the BAT entries and the
 *     trailing footer must be as generated (header, BAT padding, locator
 *     data and the room they reserve, unknown extensions, gaps, slack, the
 *     footer copy at 0 or what stands there instead);
 *   - a BAT entry may only keep its block, lose it, or point at a block
 *     past everything the file held or at the place of a block the image
 *     had (space reuse); the file ends with the same footer (timestamp and
 *     checksum aside); the parent file is unchanged;
 *   - sectors absent by their bitmap hold zeros on disk in every block the
 *     engine allocated (in all blocks if the generator left none stale);
 *   - vhd_check --repair on a copy keeps to the same rules (it may also
 *     write the footer copy at 0) and to the same content;
 *   - after a crash right after the footer moved for a new block, the
 *     repair gives the tail back unless junk stands in it;
 *   - libvhdi (pyvhdi) and qemu-img convert -f vpc (fixed and dynamic) read
 *     the same data: libvhdi every known byte of fixed images and of
 *     dynamic ones without stale bytes under clear bits (Debian's libvhdi
 *     reads some of those), QEMU (which ignores bitmaps) every known byte
 *     too, as sectors never written must read as zeros on disk, except
 *     where the generator left stale bytes (then the sectors where the
 *     model holds data).  Neither reads blocks under 4 KiB right, and
 *     QEMU needs the footer copy at 0: such images are not compared.
 *     Missing readers are skipped with a printed reason.
 *
 * Others are grown by vhd_resize: the same content then zeros, to the
 * readers too, and no byte to keep changes but the header's table fields,
 * the BAT's padding and a footer copy at 0.
 * Others get a workload, then vhd_compact: the same content, to the
 * readers too, and the repair's rules (bytes to keep stay, the file may
 * get shorter but never over one of them, blocks move only into places of
 * the image's blocks or past what the file held), but for parent locator
 * data past every block, which may move down whole, the header following.
 * Half the differencing ones are generated with their locator data last
 * (no junk after it, blocks below it that hold nothing of their own), the
 * layout in which it does move.
 *
 * VHD_TEST_SEED reproduces a run, VHD_TEST_ITERS scales it (the number of
 * images is ITERS / 25, the workload length ITERS / 50 steps).
 * VHD_TEST_NO_READERS=1 skips the independent readers (for valgrind).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define BAT_UNUSED 0xFFFFFFFFu
#define BS_READERS_MIN 4096

static struct vhd_err err;

/* ---- the generator -------------------------------------------------- */

static void be16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void be32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static void be64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
/* Ones' complement of the byte sum, the checksum field counted as zero. */
static uint32_t sum_csum(const uint8_t *p, size_t len, size_t at) {
  uint32_t s = 0;
  for (size_t i = 0; i < len; i++)
    if (i < at || i >= at + 4)
      s += p[i];
  return ~s;
}
static uint64_t be_u64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }
static uint64_t up512(uint64_t v) { return (v + 511) / 512 * 512; }

/* One generated image and what it is made of. */
struct gen {
  char path[4096];
  int type;          /* 2 fixed, 3 dynamic, 4 differencing */
  uint64_t size;     /* virtual */
  uint32_t bs;       /* block size (dynamic/differencing) */
  uint32_t entries;  /* max table entries */
  uint32_t bitmap;   /* bitmap bytes on disk */
  uint64_t bat_off;
  uint8_t *file;     /* the whole file as generated */
  uint64_t fsz;
  uint8_t *keep;     /* per file byte: 1 = must never change */
  uint32_t *bat;     /* as generated */
  uint8_t *content;  /* virtual content */
  uint8_t footer[512];
  uint32_t timestamp;
  uint8_t uuid[16];
  bool footer_copy; /* dynamic/differencing: the copy at 0 is there */
  bool stale_data;  /* random bytes under clear bitmap bits */
  uint64_t slack;   /* junk between the last known structure (not an
                       unknown extension) and the footer */
};

enum item_kind { IT_HEADER, IT_BAT, IT_LOCATOR, IT_BLOCK, IT_UNKNOWN };
struct item {
  enum item_kind kind;
  uint64_t size;
  uint64_t off;
  uint32_t idx; /* block number or locator slot */
};

static void shuffle(struct item *it, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)t_below(i);
    struct item t = it[i - 1];
    it[i - 1] = it[j];
    it[j] = t;
  }
}

static void make_footer(struct gen *g, uint64_t data_offset) {
  uint8_t *f = g->footer;
  memset(f, 0, 512);
  memcpy(f, "conectix", 8);
  be32(f + 8, 2);
  be32(f + 12, 0x00010000);
  be64(f + 16, data_offset);
  be32(f + 24, g->timestamp);
  static const char *const creators[] = {"win ", "qem2", "tap\0", "xo  "};
  /* "xo  " gets the maximum geometry, so that QEMU too uses the current size. */
  unsigned c = (unsigned)t_below(4);
  memcpy(f + 28, creators[c], 4);
  be32(f + 32, 0x000a0000);
  be32(f + 36, 0x5769326B);
  be64(f + 40, g->size);
  be64(f + 48, g->size);
  if (c == 3) {
    be16(f + 56, 65535);
    f[58] = 16;
    f[59] = 255;
  } else {
    be16(f + 56, (uint16_t)MIN(65535, g->size / 512 / (16 * 63) + 1));
    f[58] = 16;
    f[59] = 63;
  }
  be32(f + 60, (uint32_t)g->type);
  memcpy(f + 68, g->uuid, 16);
  be32(f + 64, sum_csum(f, 512, 64));
}

static size_t utf16(const char *s, bool big, uint8_t *out) {
  size_t n = 0;
  for (; *s; s++, n += 2) {
    out[n + (big ? 0 : 1)] = 0;
    out[n + (big ? 1 : 0)] = (uint8_t)*s;
  }
  return n;
}

/* Locators: the data and its code. */
struct loc {
  uint32_t code;
  uint8_t data[1024];
  uint32_t len;
  uint32_t space; /* as stored */
  uint64_t area;  /* bytes laid out */
};

static void pick_locators(const struct gen *parent, struct loc *l, int *n) {
  const char *base = strrchr(parent->path, '/') + 1;
  char s[4200];
  *n = 0;
  bool w2ru = t_chance(70), w2ku = t_chance(70), macx = t_chance(30);
  if (w2ru) {
    snprintf(s, sizeof s, ".\\%s", base);
    l[*n].code = 0x57327275;
    l[*n].len = (uint32_t)utf16(s, false, l[*n].data);
    (*n)++;
  }
  if (w2ku) {
    snprintf(s, sizeof s, "C:\\images\\%s", base);
    l[*n].code = 0x57326B75;
    l[*n].len = (uint32_t)utf16(s, false, l[*n].data);
    (*n)++;
  }
  if (macx && strlen(parent->path) + 20 < sizeof l[0].data) {
    l[*n].code = 0x4D616358;
    l[*n].len = (uint32_t)snprintf((char *)l[*n].data, sizeof l[0].data, "file://localhost%s",
                                   parent->path);
    (*n)++;
  }
  for (int i = 0; i < *n; i++) {
    /* Windows stores bytes (a multiple of 512, often more than needed), the
     * specification says sectors. */
    if (t_chance(50)) {
      l[i].space = (uint32_t)(up512(l[i].len) + 512 * t_below(3));
      l[i].area = l[i].space;
    } else {
      l[i].space = (uint32_t)(up512(l[i].len) / 512 + t_below(2));
      l[i].area = (uint64_t)l[i].space * 512;
    }
  }
}

static void set_keep(struct gen *g, uint64_t off, uint64_t len, uint8_t v) {
  memset(g->keep + off, v, len);
}

/* A fixed image: data, optional slack, footer. */
static void gen_fixed(struct gen *g) {
  uint64_t slack = t_chance(25) ? 512 * t_range(1, 3) : 0;
  g->fsz = g->size + slack + 512;
  g->file = t_xmalloc(g->fsz);
  g->keep = t_xcalloc(g->fsz, 1);
  t_fill_random(g->file, g->fsz);
  g->content = t_xmalloc(g->size);
  memcpy(g->content, g->file, g->size);
  make_footer(g, UINT64_MAX);
  memcpy(g->file + g->fsz - 512, g->footer, 512);
  set_keep(g, g->size, slack, 1); /* the footer is compared on its own */
}

/* The next differencing image ends with its parent locator data: after
 * every block, with no junk after it, and with blocks that hold nothing of
 * their own (empty bitmaps, freed by a compaction) below it, the layout a
 * compaction's step 4 moves down. */
static bool gen_locators_last;

static void gen_sparse(struct gen *g, const struct gen *parent) {
  static const uint32_t sizes[] = {512, 4096, 8192, 65536};
  g->bs = t_chance(5) ? 2u << 20 : sizes[t_below(4)];
  uint64_t nblocks = g->bs > 65536 ? t_range(1, 3) : t_range(1, 8);
  if (parent) {
    g->size = parent->size;
    nblocks = (g->size + g->bs - 1) / g->bs;
  } else {
    g->size = nblocks * g->bs;
    if (g->bs > 512 && t_chance(30))
      g->size -= 512 * t_range(1, g->bs / 512 - 1);
  }
  g->entries = (uint32_t)(nblocks + (t_chance(30) ? t_range(1, 200) : 0));
  g->bitmap = (uint32_t)up512((g->bs / 512 + 7) / 8);
  g->stale_data = t_chance(50);
  uint64_t span = (uint64_t)g->bitmap + g->bs;

  struct loc locs[3];
  int nloc = 0;
  if (parent)
    pick_locators(parent, locs, &nloc);

  struct item items[64 + 16];
  size_t n = 0;
  items[n++] = (struct item){IT_HEADER, 1024, 0, 0};
  items[n++] = (struct item){IT_BAT, up512((uint64_t)g->entries * 4), 0, 0};
  for (int i = 0; i < nloc; i++)
    items[n++] = (struct item){IT_LOCATOR, up512(locs[i].area), 0, (uint32_t)i};
  g->bat = t_xmalloc((size_t)g->entries * 4);
  for (uint32_t i = 0; i < g->entries; i++)
    g->bat[i] = BAT_UNUSED;
  bool last = gen_locators_last && nloc > 0;
  for (uint32_t b = 0; b < nblocks && n < 64; b++)
    if (last || t_chance(50))
      items[n++] = (struct item){IT_BLOCK, span, 0, b};
  for (uint64_t u = t_below(3); u > 0; u--)
    items[n++] = (struct item){IT_UNKNOWN, 512 * t_range(1, 8), 0, 0};
  if (last) {
    /* The locators to the end, in their own shuffled order. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      if (items[i].kind != IT_LOCATOR)
        items[k++] = items[i];
    shuffle(items, k);
    for (int i = 0; i < nloc; i++)
      items[k++] = (struct item){IT_LOCATOR, up512(locs[i].area), 0, (uint32_t)i};
    shuffle(items + k - nloc, (size_t)nloc);
  } else {
    shuffle(items, n);
  }

  uint64_t pos = 512;
  for (size_t i = 0; i < n; i++) {
    if (t_chance(30) && !last)
      pos += 512 * t_range(1, 4);
    if (items[i].kind == IT_BLOCK && t_chance(30) && !last)
      pos = (pos + 4095) / 4096 * 4096;
    items[i].off = pos;
    pos += items[i].size;
  }
  if (t_chance(30) && !last)
    pos += 512 * t_range(1, 3);
  g->fsz = pos + 512;
  uint64_t known_end = 0;
  for (size_t i = 0; i < n; i++)
    if (items[i].kind != IT_UNKNOWN)
      known_end = MAX(known_end, items[i].off + items[i].size);
  g->slack = pos - known_end;
  g->file = t_xmalloc(g->fsz);
  g->keep = t_xmalloc(g->fsz);
  t_fill_random(g->file, g->fsz); /* gaps, slack, reserved room: junk */
  set_keep(g, 0, g->fsz - 512, 1);
  set_keep(g, g->fsz - 512, 512, 0);

  uint64_t header_off = 0;
  for (size_t i = 0; i < n; i++)
    if (items[i].kind == IT_HEADER)
      header_off = items[i].off;
  make_footer(g, header_off);
  memcpy(g->file + g->fsz - 512, g->footer, 512);
  g->footer_copy = t_chance(75);
  if (g->footer_copy)
    memcpy(g->file, g->footer, 512);

  /* Content: the parent's (or zeros) under every clear bit. */
  g->content = t_xmalloc(g->size);
  if (parent)
    memcpy(g->content, parent->content, g->size);
  else
    memset(g->content, 0, g->size);

  uint8_t *h = NULL;
  for (size_t i = 0; i < n; i++) {
    struct item *it = &items[i];
    uint8_t *p = g->file + it->off;
    switch (it->kind) {
    case IT_HEADER:
      h = p;
      break;
    case IT_BAT:
      g->bat_off = it->off;
      break;
    case IT_LOCATOR:
      memcpy(p, locs[it->idx].data, locs[it->idx].len);
      break;
    case IT_BLOCK: {
      uint32_t b = it->idx;
      g->bat[b] = (uint32_t)(it->off / 512);
      set_keep(g, it->off, span, 0);
      memset(p, 0, g->bitmap);
      if (!g->stale_data)
        memset(p + g->bitmap, 0, g->bs);
      uint64_t vstart = (uint64_t)b * g->bs;
      bool empty = last && t_chance(60);
      for (uint32_t s = 0; s < g->bs / 512; s++) {
        uint64_t v = vstart + (uint64_t)s * 512;
        bool set = !empty && t_chance(60) && v < g->size;
        if (set) {
          p[s / 8] |= (uint8_t)(0x80u >> (s % 8));
          if (!g->stale_data)
            t_fill_random(p + g->bitmap + (uint64_t)s * 512, 512);
          memcpy(g->content + v, p + g->bitmap + (uint64_t)s * 512, 512);
        }
      }
      break;
    }
    case IT_UNKNOWN:
      if (t_chance(50))
        memcpy(p, "tdbatmap", 8); /* looks like another tool's extension */
      break;
    }
  }
  /* The header. */
  memset(h, 0, 1024);
  memcpy(h, "cxsparse", 8);
  be64(h + 8, UINT64_MAX);
  be64(h + 16, g->bat_off);
  be32(h + 24, 0x00010000);
  be32(h + 28, g->entries);
  be32(h + 32, g->bs);
  if (parent) {
    memcpy(h + 40, parent->uuid, 16);
    be32(h + 56, parent->timestamp);
    utf16(strrchr(parent->path, '/') + 1, true, h + 64);
    int slot = 0;
    for (size_t i = 0; i < n; i++) {
      if (items[i].kind != IT_LOCATOR)
        continue;
      const struct loc *l = &locs[items[i].idx];
      uint8_t *e = h + 576 + 24 * slot++;
      be32(e, l->code);
      be32(e + 4, l->space);
      be32(e + 8, l->len);
      be64(e + 16, items[i].off);
    }
  }
  be32(h + 36, sum_csum(h, 1024, 36));
  /* The BAT: entries, then padding (0xFF, as most writers do, or junk). */
  uint8_t *bat = g->file + g->bat_off;
  for (uint32_t i = 0; i < g->entries; i++)
    be32(bat + 4 * i, g->bat[i]);
  if (t_chance(50))
    memset(bat + 4 * g->entries, 0xFF, up512(4 * (uint64_t)g->entries) - 4 * g->entries);
  set_keep(g, g->bat_off, 4 * (uint64_t)g->entries, 0);
}

static void gen_write(const struct gen *g) {
  FILE *f = fopen(g->path, "wb");
  T_ASSERT(f && fwrite(g->file, 1, g->fsz, f) == g->fsz && fclose(f) == 0, "writing %s",
           g->path);
}

static void gen_image(struct gen *g, int type, const struct gen *parent, const char *name) {
  memset(g, 0, sizeof *g);
  snprintf(g->path, sizeof g->path, "%s", t_path(name));
  g->type = type;
  g->timestamp = (uint32_t)t_below(800000000);
  t_fill_random(g->uuid, 16);
  if (type == 2) {
    g->size = 512 * t_range(1, 256);
    gen_fixed(g);
  } else {
    gen_sparse(g, type == 4 ? parent : NULL);
  }
  gen_write(g);
}

static void gen_free(struct gen *g) {
  free(g->file);
  free(g->keep);
  free(g->bat);
  free(g->content);
}

/* ---- the workload -------------------------------------------------- */

struct model {
  uint64_t size;
  uint8_t *data;
  uint8_t *known;
  char last[256];
};

static void pick_range(const struct model *m, uint32_t bs, uint64_t *off, uint64_t *len) {
  uint64_t max = MIN(m->size, (uint64_t)MAX(bs, 4096u) * 2);
  switch (t_below(4)) {
  case 0: /* sub-sector */
    *off = t_below(m->size);
    *len = t_range(1, 511);
    break;
  case 1: /* whole blocks or sectors */
    if (bs && m->size >= bs) {
      *off = t_below(m->size / bs) * bs;
      *len = bs * t_range(1, 2);
    } else {
      *off = t_below(m->size / 512) * 512;
      *len = 512 * t_range(1, 8);
    }
    break;
  case 2: /* the end of the disk */
    *len = t_range(1, MIN(m->size, (uint64_t)3000));
    *off = m->size - *len;
    break;
  default:
    *off = t_below(m->size);
    *len = t_range(1, max);
  }
  if (*off >= m->size)
    *off = m->size - 1;
  *len = MIN(*len, m->size - *off);
}

static void verify(vhd_t *v, const struct model *m, const char *when) {
  uint8_t *buf = t_xmalloc(m->size);
  int r = vhd_read(v, buf, 0, m->size, &err);
  T_OK(r, &err, t_fmt("vhd_read of the whole disk %s", when));
  for (uint64_t i = 0; i < m->size; i++)
    if (m->known[i] && buf[i] != m->data[i])
      t_fail("%s: byte %" PRIu64 " reads 0x%02x, model has 0x%02x (last op: %s)", when, i, buf[i],
             m->data[i], m->last);
  free(buf);
}

static bool workload(vhd_t *v, struct model *m, uint32_t bs, uint64_t steps) {
  bool trimmed = false;
  uint8_t *buf = t_xmalloc((size_t)MAX(bs, 4096u) * 2 + 4096);
  for (uint64_t step = 0; step < steps; step++) {
    uint64_t off, len;
    pick_range(m, bs, &off, &len);
    unsigned op = (unsigned)t_below(100);
    if (op < 50) {
      t_fill_nonzero(buf, len);
      snprintf(m->last, sizeof m->last, "step %" PRIu64 ": write %" PRIu64 "+%" PRIu64, step, off,
               len);
      T_OK(vhd_write(v, buf, off, len, t_chance(10) ? VHD_FUA : 0, &err), &err, m->last);
      memcpy(m->data + off, buf, len);
      memset(m->known + off, 1, len);
    } else if (op < 75) {
      unsigned flags = t_chance(50) ? VHD_MAY_TRIM : 0;
      if (t_chance(15))
        flags = VHD_NO_HOLE;
      snprintf(m->last, sizeof m->last, "step %" PRIu64 ": write zeroes %" PRIu64 "+%" PRIu64
               " flags 0x%x", step, off, len, flags);
      T_OK(vhd_write_zeroes(v, off, len, flags, &err), &err, m->last);
      memset(m->data + off, 0, len);
      memset(m->known + off, 1, len);
    } else if (op < 88) {
      snprintf(m->last, sizeof m->last, "step %" PRIu64 ": trim %" PRIu64 "+%" PRIu64, step, off,
               len);
      T_OK(vhd_trim(v, off, len, 0, &err), &err, m->last);
      /* Whole sectors inside the range become undefined. */
      uint64_t a = (off + 511) / 512 * 512, b = (off + len) / 512 * 512;
      if (a < b)
        memset(m->known + a, 0, b - a);
      trimmed = true;
    } else if (op < 96) {
      snprintf(m->last, sizeof m->last, "step %" PRIu64 ": flush", step);
      T_OK(vhd_flush(v, &err), &err, m->last);
    } else {
      snprintf(m->last, sizeof m->last, "step %" PRIu64 ": read %" PRIu64 "+%" PRIu64, step, off,
               len);
      T_OK(vhd_read(v, buf, off, len, &err), &err, m->last);
      for (uint64_t i = 0; i < len; i++)
        if (m->known[off + i] && buf[i] != m->data[off + i])
          t_fail("%s: byte %" PRIu64 " reads 0x%02x, model has 0x%02x", m->last, off + i, buf[i],
                 m->data[off + i]);
    }
  }
  free(buf);
  return trimmed;
}

/* ---- the layout after close ---------------------------------------- */

static uint8_t *read_whole(const char *path, uint64_t *size) {
  *size = t_file_size(path);
  uint8_t *b = t_xmalloc(*size ? *size : 1);
  t_pread_file(path, b, *size, 0);
  return b;
}

static unsigned compact_locators_moved; /* compactions that moved locator data */

/* path: g's file after the engine had it (or a repaired copy of it);
 * repaired: the footer copy at 0 may have been (re)written. */
static void check_layout(const struct gen *g, const char *path, bool repaired, bool compacted,
                         const char *what) {
  uint64_t nsz;
  CLEANUP_FREE uint8_t *now = read_whole(path, &nsz);
  if (repaired && g->type != 2 && memcmp(now, g->file, 512) != 0) {
    for (int i = 0; i < 512; i++)
      if (!(i >= 24 && i < 28) && !(i >= 64 && i < 68) && now[i] != g->footer[i])
        t_fail("%s: the repair wrote byte %d of the footer copy at 0 as 0x%02x, not 0x%02x",
               what, i, now[i], g->footer[i]);
    memcpy(now, g->file, 512); /* compared: the rest below */
  }
  /* A compaction may move the parent locator data that lies past every
   * block down after them (compact.c, step 4): the whole span byte for
   * byte, every locator in it by the same distance, with only their data
   * offsets and the checksum changed in the header.  Its old place is
   * then not a byte to keep. */
  CLEANUP_FREE uint8_t *keep = t_xmalloc(g->fsz);
  memcpy(keep, g->keep, g->fsz);
  uint64_t ho = be_u64(g->footer + 16);
  if (compacted && g->type == 4 && nsz >= ho + 1024) {
    uint64_t delta = 0;
    /* Checked before the loop puts the old offsets back for the compare. */
    bool sum_ok = rd32(now + ho + 36) == sum_csum(now + ho, 1024, 36);
    for (int i = 0; i < 8; i++) {
      const uint8_t *was = g->file + ho + 576 + 24 * i, *is = now + ho + 576 + 24 * i;
      uint64_t old_off = be_u64(was + 16), new_off = be_u64(is + 16);
      if (!rd32(was) || old_off == new_off)
        continue;
      T_ASSERT(memcmp(was, is, 16) == 0 && new_off < old_off && (old_off - new_off) % 512 == 0 &&
                   (!delta || delta == old_off - new_off),
               "%s: parent locator %d changed: offset %" PRIu64 " -> %" PRIu64, what, i, old_off,
               new_off);
      delta = old_off - new_off;
      uint32_t space = rd32(was + 4), len = rd32(was + 8);
      uint64_t area = space >= len ? space : (uint64_t)space * 512;
      uint64_t a = old_off / 512 * 512, b = up512(old_off + MAX(area, (uint64_t)len));
      T_ASSERT(b <= g->fsz - 512 && b - delta <= nsz - 512,
               "%s: parent locator %d's area %" PRIu64 "-%" PRIu64 " moved by %" PRIu64, what, i,
               a, b, delta);
      for (uint64_t k = a; k < b; k++)
        if (now[k - delta] != g->file[k])
          t_fail("%s: parent locator %d's area moved from %" PRIu64 " to %" PRIu64
                 ": byte %" PRIu64 " differs",
                 what, i, a, a - delta, k - a);
      memset(keep + a, 0, b - a);
      memcpy(now + ho + 576 + 24 * i + 16, was + 16, 8); /* compared: the rest below */
    }
    if (delta) {
      T_ASSERT(sum_ok, "%s: the header's checksum is wrong after the locator data moved", what);
      memcpy(now + ho + 36, g->file + ho + 36, 4);
      compact_locators_moved++;
    }
  }
  /* Closing, and a repair, may cut only what was block space (blocks
   * freed at the end of the file), never a byte to keep: checked byte by
   * byte below. */
  T_ASSERT(nsz % 512 == 0 || nsz == g->fsz, "%s: file size %" PRIu64 " is not a sector multiple",
           what, nsz);
  for (uint64_t i = 0; i < g->fsz; i++)
    if (keep[i] && i >= nsz - 512)
      t_fail("%s: byte %" PRIu64 " of the file (not a block, BAT entry or the trailing footer) "
             "was cut off or overwritten by the footer (the file is now %" PRIu64 " bytes)",
             what, i, nsz);
    else if (keep[i] && now[i] != g->file[i])
      t_fail("%s: byte %" PRIu64 " of the file (not a block, BAT entry or the trailing footer) "
             "changed from 0x%02x to 0x%02x",
             what, i, g->file[i], now[i]);
  /* The trailing footer: the same, timestamp and checksum aside. */
  const uint8_t *f = now + nsz - 512;
  T_ASSERT(rd32(f + 64) == sum_csum(f, 512, 64), "%s: the trailing footer's checksum is wrong",
           what);
  for (int i = 0; i < 512; i++)
    if (!(i >= 24 && i < 28) && !(i >= 64 && i < 68) && f[i] != g->footer[i])
      t_fail("%s: trailing footer byte %d changed from 0x%02x to 0x%02x", what, i, g->footer[i],
             f[i]);
  if (g->type == 2) {
    T_ASSERT(nsz == g->fsz, "%s: a fixed image changed size", what);
    return;
  }
  /* BAT entries: kept, dropped, or a block past all that was in the file
   * or where one of the image's blocks was. */
  uint64_t span = (uint64_t)g->bitmap + g->bs;
  uint64_t old_end = g->fsz - 512;
  for (uint32_t i = 0; i < g->entries; i++) {
    uint32_t e = rd32(now + g->bat_off + 4 * (uint64_t)i);
    if (e == BAT_UNUSED || e == g->bat[i])
      continue;
    uint64_t off = (uint64_t)e * 512;
    bool was_block = false;
    for (uint32_t j = 0; j < g->entries && !was_block; j++)
      was_block = g->bat[j] != BAT_UNUSED && (uint64_t)g->bat[j] * 512 == off;
    /* vhd_compact also fills gaps that held nothing to keep (blank). */
    bool gap = compacted && off < old_end;
    for (uint64_t b = off; gap && b < MIN(off + span, old_end); b++)
      gap = !g->keep[b];
    T_ASSERT(was_block || gap || off >= old_end,
             "%s: BAT entry %u points at a new block at %" PRIu64 ", inside what the file held "
             "(it ended at %" PRIu64 ") and not in a gap of nothing to keep",
             what, i, off, old_end);
    T_ASSERT(off + span <= nsz - 512, "%s: BAT entry %u: block at %" PRIu64 " past the footer",
             what, i, off);
  }
  /* Sectors of a block that its bitmap marks absent must hold zeros on
   * disk (for readers that ignore bitmaps) in every block the engine
   * allocated, and in all blocks when the generator left no stale bytes. */
  for (uint32_t i = 0; i < g->entries; i++) {
    uint32_t e = rd32(now + g->bat_off + 4 * (uint64_t)i);
    if (e == BAT_UNUSED || (e == g->bat[i] && g->stale_data))
      continue;
    const uint8_t *bm = now + (uint64_t)e * 512;
    for (uint32_t s = 0; s < g->bs / 512; s++) {
      if (bm[s / 8] & (0x80u >> (s % 8)))
        continue;
      const uint8_t *d = bm + g->bitmap + (uint64_t)s * 512;
      for (int k = 0; k < 512; k++)
        if (d[k])
          t_fail("%s: block %u (at %" PRIu64 "): sector %u is absent by its bitmap but holds "
                 "byte 0x%02x at %d on disk",
                 what, i, (uint64_t)e * 512, s, d[k], k);
    }
  }
}

/* ---- independent readers ------------------------------------------ */

static bool have_cmd(const char *cmd) {
  return system(t_fmt("command -v %s >/dev/null 2>&1", cmd)) == 0;
}

static const char pyvhdi_script[] =
    "import sys, pyvhdi\n"
    "out, paths = sys.argv[1], sys.argv[2:]\n"
    "fs = []\n"
    "for p in paths:\n"
    "    f = pyvhdi.file(); f.open(p); fs.append(f)\n"
    "for c, p in reversed(list(zip(fs, fs[1:]))):\n"
    "    c.set_parent(p)\n"
    "f = fs[0]; n = f.get_media_size(); o = open(out, 'wb'); pos = 0\n"
    "while pos < n:\n"
    "    k = min(4096, n - pos); f.seek_offset(pos, 0); o.write(f.read_buffer(k)); pos += k\n";

static unsigned compared_libvhdi, compared_qemu;
static bool readers_probed, have_pyvhdi, have_qemu;

static void readers_probe(void) {
  if (readers_probed)
    return;
  readers_probed = true;
  const char *no = getenv("VHD_TEST_NO_READERS");
  if (no && *no && strcmp(no, "0") != 0) {
    printf("independent readers skipped (VHD_TEST_NO_READERS is set)\n");
    return;
  }
  if (system("/usr/bin/python3 -c 'import pyvhdi' >/dev/null 2>&1") == 0)
    have_pyvhdi = true;
  else
    printf("libvhdi comparison skipped: /usr/bin/python3 cannot import pyvhdi "
           "(python3-libvhdi)\n");
  if (have_cmd("qemu-img"))
    have_qemu = true;
  else
    printf("QEMU comparison skipped: qemu-img is not installed\n");
  if (have_pyvhdi) {
    FILE *f = fopen(t_path("pyvhdi-read.py"), "w");
    T_ASSERT(f && fputs(pyvhdi_script, f) >= 0 && fclose(f) == 0, "writing the pyvhdi script");
  }
}

static uint8_t *run_reader(const char *cmd, const char *out, uint64_t size, const char *what) {
  unlink(out);
  int st = system(cmd);
  T_ASSERT(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: `%s' failed (status %d)",
           what, cmd, st);
  uint64_t n;
  uint8_t *b = read_whole(out, &n);
  T_ASSERT(n >= size, "%s: `%s' gave %" PRIu64 " bytes, not %" PRIu64, what, cmd, n, size);
  return b;
}

static void compare_readers(const struct gen *g, const struct model *m, const char *what) {
  readers_probe();
  if (g->type == 4)
    return; /* Debian's libvhdi misreads partly set bitmap bytes over a parent */
  const char *out = t_path("reader.raw");
  char img[4200], o[4200];
  snprintf(img, sizeof img, "%s", g->path);
  snprintf(o, sizeof o, "%s", out);
  /* Debian's libvhdi refuses blocks whose bitmap is less than 512 bytes,
   * and takes the sectors after the first set bit of a bitmap byte from the
   * file even where their bits are clear: compare it only where those
   * sectors hold zeros (the engine zeroes what it clears). */
  if (have_pyvhdi &&
      (g->type == 2 || (g->bs >= BS_READERS_MIN && !g->stale_data))) {
    CLEANUP_FREE uint8_t *b = run_reader(
        t_fmt("/usr/bin/python3 '%s' '%s' '%s'", t_path("pyvhdi-read.py"), o, img), o, m->size,
        t_fmt("%s: libvhdi", what));
    compared_libvhdi++;
    for (uint64_t i = 0; i < m->size; i++)
      if (m->known[i] && b[i] != m->data[i])
        t_fail("%s: libvhdi reads 0x%02x at byte %" PRIu64 ", the model has 0x%02x", what, b[i],
               i, m->data[i]);
  }
  /* QEMU refuses a dynamic image without the footer copy at 0, and takes
   * the bitmap of a block under 4 KiB to be 0 bytes long. */
  if (have_qemu && (g->type == 2 || (g->footer_copy && g->bs >= BS_READERS_MIN))) {
    CLEANUP_FREE uint8_t *b =
        run_reader(t_fmt("qemu-img convert -f vpc -O raw '%s' '%s'", img, o), o, m->size,
                   t_fmt("%s: qemu-img", what));
    compared_qemu++;
    /* QEMU ignores bitmaps: where the generator left stale bytes under
     * clear bits, compare only the sectors where the model holds data;
     * elsewhere every sector the engine did not write must read as zeros
     * on disk too. */
    for (uint64_t s = 0; s < m->size; s += 512) {
      uint64_t n = MIN(512, m->size - s);
      bool data = g->type == 2 || !g->stale_data;
      for (uint64_t i = s; i < s + n && !data; i++)
        data = m->known[i] && m->data[i];
      if (!data)
        continue;
      for (uint64_t i = s; i < s + n; i++)
        if (m->known[i] && b[i] != m->data[i])
          t_fail("%s: QEMU reads 0x%02x at byte %" PRIu64 ", the model has 0x%02x", what, b[i],
                 i, m->data[i]);
    }
  }
}

/* ---- one round ------------------------------------------------------ */

/* A round's parent image: the engine only reads it, so not a byte of its
 * file may change. */
static void check_parent_unchanged(const struct gen *parent, const char *label) {
  uint64_t psz;
  CLEANUP_FREE uint8_t *p = read_whole(parent->path, &psz);
  T_ASSERT(psz == parent->fsz && memcmp(p, parent->file, psz) == 0,
           "%s: the parent file changed", label);
}

/* The end of a round: its image (and parent, if any) and model go. */
static void round_free(struct gen *g, struct gen *parent, struct model *m) {
  unlink(g->path);
  free(m->data);
  free(m->known);
  gen_free(g);
  if (parent) {
    unlink(parent->path);
    gen_free(parent);
  }
}

static void round_one(unsigned n, uint64_t steps) {
  struct gen parent, g;
  int type = (int)t_range(2, 4);
  bool has_parent = type == 4;
  if (has_parent)
    gen_image(&parent, t_chance(70) ? 3 : 2, NULL, t_fmt("parent-%u.vhd", n));
  gen_image(&g, type, has_parent ? &parent : NULL, t_fmt("img-%u.vhd", n));
  const char *what = t_fmt("image %u (%s, %" PRIu64 " bytes, block %u, file %" PRIu64 ")", n,
                           type == 2 ? "fixed" : type == 3 ? "dynamic" : "differencing", g.size,
                           g.bs, g.fsz);
  char label[512];
  snprintf(label, sizeof label, "%s", what);
  int c = t_check(g.path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: the generated image is corrupt to vhd_check", label);

  struct model m = {.size = g.size};
  m.data = t_xmalloc(g.size);
  m.known = t_xmalloc(g.size);
  memcpy(m.data, g.content, g.size);
  memset(m.known, 1, g.size);

  /* Some rounds on a file system that cannot punch holes: freed blocks
   * then keep their bytes until they are reused. */
  bool no_punch = t_chance(40);
  t_set_punch_unsupported(no_punch);
  if (no_punch)
    snprintf(label + strlen(label), sizeof label - strlen(label), ", no hole punching");
  vhd_t *v = t_open(g.path, false);
  T_ASSERT(vhd_virtual_size(v) == g.size, "%s: the engine sees %" PRIu64 " bytes", label,
           vhd_virtual_size(v));
  verify(v, &m, t_fmt("%s, at open", label));
  workload(v, &m, g.bs, steps);
  T_OK(vhd_close(v, &err), &err, t_fmt("%s: vhd_close", label));
  t_set_punch_unsupported(false);

  check_layout(&g, g.path, false, false, label);
  v = t_open(g.path, true);
  verify(v, &m, t_fmt("%s, reopened", label));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  c = t_check(g.path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: corrupt to vhd_check after the workload", label);
  if (has_parent)
    check_parent_unchanged(&parent, label);
  compare_readers(&g, &m, label);

  /* vhd_check --repair keeps to the same bytes (it may also write the
   * footer copy at 0) and to the same content. */
  char repaired[4200];
  snprintf(repaired, sizeof repaired, "%s", t_path("repaired.vhd"));
  t_copy_file(g.path, repaired);
  struct vhd_check_opts co = {.repair = true};
  c = vhd_check(repaired, &co, &err);
  T_OK(c, &err, t_fmt("%s: vhd_check --repair", label));
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: corrupt after vhd_check --repair", label);
  check_layout(&g, repaired, true, false, t_fmt("%s, after vhd_check --repair", label));
  v = t_open(repaired, true);
  verify(v, &m, t_fmt("%s, repaired", label));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  unlink(repaired);
  round_free(&g, has_parent ? &parent : NULL, &m);
}

/* vhd_compact after a workload: the same content (also to libvhdi and
 * QEMU), and the same rules as a repair: every byte to keep stays (the file
 * may get shorter, never over one), blocks move only into places of the
 * image's blocks, into gaps that held nothing to keep (compact.c's free
 * space) or past what the file held, and sectors absent by the
 * bitmap of a moved block read as zeros on disk. */
static unsigned compactions, compact_freed, compact_moved;

static void compact_round(unsigned n, uint64_t steps) {
  struct gen parent, g;
  int type = t_chance(60) ? 3 : 4;
  bool has_parent = type == 4;
  if (has_parent)
    gen_image(&parent, t_chance(70) ? 3 : 2, NULL, t_fmt("cparent-%u.vhd", n));
  /* Half the children end with their locator data; a workload that
   * allocates puts blocks past it, so two thirds of those get none. */
  gen_locators_last = has_parent && t_chance(50);
  if (gen_locators_last && t_chance(67))
    steps = 0;
  gen_image(&g, type, has_parent ? &parent : NULL, t_fmt("compact-%u.vhd", n));
  gen_locators_last = false;
  char label[512];
  snprintf(label, sizeof label, "compacted image %u (%s, %" PRIu64 " bytes, block %u, file %" PRIu64 ")",
           n, type == 3 ? "dynamic" : "differencing", g.size, g.bs, g.fsz);
  struct model m = {.size = g.size};
  m.data = t_xmalloc(g.size);
  m.known = t_xmalloc(g.size);
  memcpy(m.data, g.content, g.size);
  memset(m.known, 1, g.size);
  vhd_t *v = t_open(g.path, false);
  workload(v, &m, g.bs, steps);
  T_OK(vhd_close(v, &err), &err, t_fmt("%s: vhd_close", label));
  check_layout(&g, g.path, true, false, t_fmt("%s, before compacting", label));
  struct vhd_compact_opts co = {0};
  struct vhd_compact_result res;
  T_OK(vhd_compact(g.path, &co, &res, &err), &err, t_fmt("%s: vhd_compact", label));
  T_ASSERT(res.file_size_after == t_file_size(g.path), "%s: the file is %" PRIu64
           " bytes, vhd_compact says %" PRIu64, label, t_file_size(g.path), res.file_size_after);
  compactions++;
  compact_freed += res.blocks_freed;
  compact_moved += res.blocks_moved;
  check_layout(&g, g.path, true, true, label);
  int c = t_check(g.path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: corrupt to vhd_check after compacting", label);
  v = t_open(g.path, true);
  verify(v, &m, label);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  if (has_parent)
    check_parent_unchanged(&parent, label);
  compare_readers(&g, &m, label);
  round_free(&g, has_parent ? &parent : NULL, &m);
}

/* vhd_resize grows a generated image: the content stays, zeros follow (to
 * libvhdi and QEMU too), and no byte to keep changes but the dynamic
 * header's table offset, entry count and checksum and the BAT's padding
 * (where new entries may go); the file never gets shorter. */
static unsigned resizes, resizes_bat_moved;

static void resize_round(unsigned n) {
  struct gen parent, g;
  int type = t_chance(60) ? 3 : 4;
  bool has_parent = type == 4;
  if (has_parent)
    gen_image(&parent, t_chance(70) ? 3 : 2, NULL, t_fmt("rparent-%u.vhd", n));
  gen_image(&g, type, has_parent ? &parent : NULL, t_fmt("resize-%u.vhd", n));
  uint64_t new_size = g.size + 512 * t_range(1, t_chance(50) ? 64 : 4096);
  char label[512];
  snprintf(label, sizeof label,
           "resized image %u (%s, %" PRIu64 " -> %" PRIu64 " bytes, block %u, %u entries, file %" PRIu64 ")",
           n, type == 3 ? "dynamic" : "differencing", g.size, new_size, g.bs, g.entries, g.fsz);
  struct vhd_resize_opts ro = {.size = new_size, .exact_size = true};
  T_OK(vhd_resize(g.path, &ro, NULL, &err), &err, t_fmt("%s: vhd_resize", label));
  resizes++;
  uint64_t nsz;
  CLEANUP_FREE uint8_t *now = read_whole(g.path, &nsz);
  T_ASSERT(nsz >= g.fsz, "%s: the file shrank to %" PRIu64 " bytes", label, nsz);
  uint64_t hoff = rd32(g.footer + 20); /* data offset, low half: small files */
  uint64_t pad = g.bat_off + 4 * (uint64_t)g.entries, pad_end = g.bat_off + up512(4 * (uint64_t)g.entries);
  for (uint64_t i = 0; i < g.fsz - 512; i++) {
    if (!g.keep[i] || now[i] == g.file[i])
      continue;
    uint64_t h = i - hoff;
    bool header_field = i >= hoff && ((h >= 16 && h < 24) || (h >= 28 && h < 32) || (h >= 36 && h < 40));
    bool footer_copy = g.footer_copy && i < 512; /* rewritten with the new size */
    T_ASSERT(header_field || footer_copy || (i >= pad && i < pad_end),
             "%s: byte %" PRIu64 " of the file (not a block, BAT entry, header field or BAT "
             "padding) changed from 0x%02x to 0x%02x", label, i, g.file[i], now[i]);
  }
  if (be_u64(now + hoff + 16) != g.bat_off)
    resizes_bat_moved++;
  int c = t_check(g.path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: corrupt to vhd_check after resizing", label);
  struct model m = {.size = new_size};
  m.data = t_xcalloc(1, new_size);
  m.known = t_xmalloc(new_size);
  memcpy(m.data, g.content, g.size);
  memset(m.known, 1, new_size);
  vhd_t *v = t_open(g.path, true);
  T_ASSERT(vhd_virtual_size(v) == new_size, "%s: the engine sees %" PRIu64 " bytes", label,
           vhd_virtual_size(v));
  verify(v, &m, label);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  if (has_parent)
    check_parent_unchanged(&parent, label);
  compare_readers(&g, &m, label);
  round_free(&g, has_parent ? &parent : NULL, &m);
}

/* A crash right after the footer moved for a new block (the next write,
 * the block's bitmap, fails): the image must be valid with its content, and
 * vhd_check --repair must give the tail back (it holds nothing but the old
 * footer) unless the generator put junk slack or an unknown extension
 * after the last known structure, while keeping every byte it may not
 * touch. */
static unsigned crashes, crash_tails_reclaimed;

static void crash_round(unsigned n) {
  struct gen g;
  gen_image(&g, 3, NULL, t_fmt("crash-%u.vhd", n));
  char label[512];
  snprintf(label, sizeof label, "crash image %u (%" PRIu64 " bytes, block %u, file %" PRIu64 ")",
           n, g.size, g.bs, g.fsz);
  uint32_t blk = UINT32_MAX;
  for (uint32_t i = 0; (uint64_t)i * g.bs < g.size && blk == UINT32_MAX; i++)
    if (g.bat[i] == BAT_UNUSED)
      blk = i;
  if (blk != UINT32_MAX) {
    vhd_t *v = t_open(g.path, false);
    uint8_t sector[512];
    t_fill_nonzero(sector, sizeof sector);
    vhd_fault_arm(2); /* the new footer and its sync go through */
    int r = vhd_write(v, sector, (uint64_t)blk * g.bs, sizeof sector, 0, &err);
    vhd_fault_arm(-1);
    T_ASSERT(r == -EIO, "%s: the write into block %u returned %d, not EIO", label, blk, r);
    vhd_abandon(v);
    T_ASSERT(t_file_size(g.path) > g.fsz, "%s: no footer was written past the old one", label);
    int c = t_check(g.path);
    T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: corrupt after the crash", label);
    struct vhd_check_opts co = {.repair = true};
    c = vhd_check(g.path, &co, &err);
    T_OK(c, &err, t_fmt("%s: vhd_check --repair", label));
    check_layout(&g, g.path, true, false, t_fmt("%s, repaired after the crash", label));
    if (!g.slack) {
      T_ASSERT(t_file_size(g.path) == g.fsz,
               "%s: the repair left %" PRIu64 " bytes, not the %" PRIu64 " before the crash",
               label, t_file_size(g.path), g.fsz);
      crash_tails_reclaimed++;
    }
    crashes++;
    struct model m = {.size = g.size, .data = g.content};
    m.known = t_xmalloc(g.size);
    memset(m.known, 1, g.size);
    v = t_open(g.path, true);
    verify(v, &m, label);
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    free(m.known);
  }
  unlink(g.path);
  gen_free(&g);
}

int main(void) {
  t_init("test-vhd-layout");
  uint64_t rounds = t_scaled(60), steps = t_scaled(30);
  for (unsigned n = 0; n < rounds; n++)
    round_one(n, steps);
  for (unsigned n = 0; n < rounds / 4 + 1; n++)
    crash_round(n);
  for (unsigned n = 0; n < rounds / 2 + 1; n++)
    compact_round(n, steps);
  for (unsigned n = 0; n < rounds / 2 + 1; n++)
    resize_round(n);
  printf("%" PRIu64 " generated images kept every byte outside the engine's blocks; "
         "%u read the same in libvhdi, %u in QEMU; %u crashes after a footer move, "
         "%u tails given back by the repair; %u compactions freed %u blocks and moved %u, "
         "%u moved parent locator data; %u resizes, %u with the BAT moved\n",
         rounds, compared_libvhdi, compared_qemu, crashes, crash_tails_reclaimed, compactions,
         compact_freed, compact_moved, compact_locators_moved, resizes, resizes_bat_moved);
  return 0;
}
