/* compact.c: giving back the space of blocks that hold only zeros, and of
 * gaps, by moving blocks down (vhdimg compact, like Optimize-VHD).
 *
 * Write order (on top of the one in vhd-internal.h):
 *  1. Blocks whose present sectors read as zeros (and, in a differencing
 *     image, whose parent reads zeros there too) are zeroed, bitmaps
 *     included, and synced, then lose their BAT entry; a vhd_flush makes
 *     that durable.  Each of the three states reads the same, so a crash
 *     anywhere changes nothing a reader sees, and the space is blank once
 *     unreferenced.
 *  2. Only then is their space written: a block moves into free space
 *     below it (copy, sync, its BAT entry switched, sync), so the entry on
 *     disk always points at a complete copy.  Free space is what step 1
 *     freed and gaps after every other structure that hold only zeros or
 *     copies of the footer; a destination never overlaps a block still in
 *     use (moves fill the lowest free slots from the highest blocks, whose
 *     old places are never reused).
 *  3. Right after the switch, the footer is written at the new end and
 *     synced while the old one still ends the file, then the file is cut
 *     after it: the old places of moved blocks, past the new end, go with
 *     it.  Old places below the end are then zeroed.  A crash before the
 *     cut leaves old places that are copies of blocks in use; a rerun
 *     knows them as such and takes them as free (add_blank).
 *  4. Parent locator data that lies past every block (where a rebase puts
 *     it when there is no room among the blocks) would keep the file from
 *     ending after the blocks: it is copied, byte for byte, to the blank
 *     space right after them and synced, the header is switched to the
 *     copy and synced, and the footer is cut down after it as in 3.  The
 *     copy is nothing until the switch and the old data nothing after it
 *     (copies of the live locator data: vhd_range_holds_nothing), so a
 *     crash leaves at most bytes a rerun takes as free.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

#define COPY_CHUNK (1024u * 1024)

struct seg {
  uint64_t start, end;
};

struct compact {
  vhd_t *vhd;
  const struct vhd_compact_opts *o;
  struct vhd_err *err;
  uint64_t span;
  uint64_t done, total;
};

static void progress(struct compact *c, uint64_t n) {
  c->done += n;
  if (c->o->progress)
    c->o->progress(c->o->opaque, c->done, c->total);
}

static bool all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* 1 when every sector block blk marks present reads as zeros, in this
 * image and in the parent (if any); 0 when one does not. */
static int block_blank(struct compact *c, uint32_t blk, uint8_t *buf) {
  vhd_t *vhd = c->vhd;
  uint8_t *bm;
  int r = vhd_bitmap_get(vhd, blk, &bm, c->err);
  if (r < 0)
    return r;
  uint64_t data = (uint64_t)vhd->bat[blk] * 512 + vhd->bitmap_size;
  uint64_t vstart = (uint64_t)blk * vhd->block_size;
  vhd_t *p = vhd->parent;
  for (uint32_t s = 0; s < vhd->sectors_per_block;) {
    bool set;
    uint32_t n = vhd_bitmap_run(bm, s, vhd->sectors_per_block, &set);
    if (set) {
      uint64_t len = (uint64_t)n * 512;
      if ((r = vhd_io_pread(vhd->fd, buf, len, data + (uint64_t)s * 512)) < 0)
        return vhd_set_err(c->err, r, "%s: reading block %u at offset %llu: %s", vhd->path, blk,
                           (unsigned long long)(data + (uint64_t)s * 512), strerror(-r));
      if (!all_zero(buf, len))
        return 0;
      uint64_t v = vstart + (uint64_t)s * 512;
      if (p && v < p->virtual_size) {
        uint64_t in = MIN(len, p->virtual_size - v);
        if ((r = vhd_read(p, buf, v, in, c->err)) < 0)
          return r;
        if (!all_zero(buf, in))
          return 0;
      }
    }
    s += n;
  }
  return 1;
}

static int seg_cmp(const void *a, const void *b) {
  const struct seg *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

struct blk_ref {
  uint64_t off;
  uint32_t blk;
};
static int ref_cmp(const void *a, const void *b) {
  const struct blk_ref *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* The parent locators' data areas past floor, with the room they reserve,
 * sorted: blocks move around them.  Those past every block (a rebase's
 * with no room among the blocks, another tool's) move down after the
 * blocks at the end (step 4); the others stay where they are. */
static size_t locator_areas(const vhd_t *vhd, uint64_t floor, struct seg out[8]) {
  size_t n = 0;
  for (int i = 0; i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length && vhd_locator_area_end(l) > floor)
      out[n++] = (struct seg){ROUND_DOWN(l->data_offset, 512),
                              ROUND_UP(vhd_locator_area_end(l), 512)};
  }
  qsort(out, n, sizeof *out, seg_cmp);
  return n;
}

/* Locator data longer than this is not known as a copy of the live data
 * (bat.c's locator_copy_at), so a crash would leave its copy for good. */
#define LOCATOR_MOVE_MAX 65536u

/* Where the parent locator data past `from` (the end of the blocks) can
 * go: *dst, its span [*s, *e) and the locators in it as a mask, or 0 when
 * none lies wholly past `from` or moving would not shorten the file.  The
 * span moves as one: what lies between its locators is blank (add_blank
 * found nothing there that would have ended the blocks past it).  Only a
 * differencing image's locators count (the format gives no other type
 * any; open checks only theirs). */
static unsigned locators_past(const vhd_t *vhd, uint64_t from, uint64_t *dst, uint64_t *s,
                              uint64_t *e) {
  unsigned mask = 0;
  uint64_t to = from;
  *s = UINT64_MAX;
  *e = 0;
  if (vhd->type != VHD_TYPE_DIFFERENCING)
    return 0;
  for (int i = 0; i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code == VHD_PLAT_NONE || !l->data_length)
      continue;
    uint64_t a = ROUND_DOWN(l->data_offset, 512), b = ROUND_UP(vhd_locator_area_end(l), 512);
    if (a < from) {
      to = MAX(to, b); /* stays: one reaching past the blocks keeps its room */
      continue;
    }
    /* Room reserved past the footer is not in the file to copy, and a
     * copy too long to be recognised would outlive a crash. */
    if (b > vhd->footer_offset || l->data_length > LOCATOR_MOVE_MAX)
      return 0;
    mask |= 1u << i;
    *s = MIN(*s, a);
    *e = MAX(*e, b);
  }
  /* The copy, and the footer written after it, may not overlap the live
   * data, which must stay whole until the header is switched and until
   * the cut has taken it (a footer over its first sector would leave the
   * rest as bytes nothing recognises); a span just above the blocks stays
   * put. */
  *dst = ROUND_UP(to, 512);
  return mask && *dst + (*e - *s) + VHD_FOOTER_SIZE <= *s ? mask : 0;
}

struct locators_shift {
  unsigned mask;
  uint64_t delta;
};

static void shift_locators(uint8_t *raw, void *arg) {
  const struct locators_shift *sh = arg;
  for (int i = 0; i < 8; i++)
    if (sh->mask & (1u << i)) {
      uint8_t *f = raw + VHD_LOCATOR_ENTRY(i) + 16;
      be64_store(f, be64_load(f) - sh->delta);
    }
}

/* 4. The locator data past the blocks moved down to right after them, the
 * header switched to it, the file cut after it (see the top comment). */
static int locators_move_down(struct compact *c, unsigned mask, uint64_t dst, uint64_t s,
                              uint64_t e, uint8_t *buf) {
  vhd_t *vhd = c->vhd;
  uint64_t delta = s - dst;
  int r;
  for (uint64_t d = s; d < e;) {
    size_t n = (size_t)MIN(e - d, (uint64_t)COPY_CHUNK);
    if ((r = vhd_io_pread(vhd->fd, buf, n, d)) < 0)
      return vhd_set_err(c->err, r, "%s: reading parent locator data at offset %llu: %s",
                         vhd->path, (unsigned long long)d, strerror(-r));
    if ((r = vhd_io_pwrite(vhd, buf, n, d - delta)) < 0)
      return vhd_set_err(c->err, r, "%s: copying parent locator data to offset %llu: %s",
                         vhd->path, (unsigned long long)(d - delta), strerror(-r));
    d += n;
  }
  if ((r = vhd_io_sync(vhd)) < 0)
    return vhd_set_err(c->err, r, "%s: fdatasync after copying parent locator data: %s",
                       vhd->path, strerror(-r));
  /* Only the data offsets change: everything else stays as it is on disk. */
  struct locators_shift shift = {mask, delta};
  if ((r = vhd_header_rewrite(vhd, shift_locators, &shift, c->err)) < 0)
    return r;
  if ((r = vhd_io_footer_cut(vhd, dst + (e - s), false)) < 0)
    return vhd_set_err(c->err, r, "%s: moving the footer to offset %llu: %s", vhd->path,
                       (unsigned long long)(dst + (e - s)), strerror(-r));
  return 0;
}

static int push_seg(struct seg **v, size_t *n, size_t *cap, uint64_t a, uint64_t b) {
  if (*n && (*v)[*n - 1].end == a) {
    (*v)[*n - 1].end = b;
    return 0;
  }
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 64;
    struct seg *nv = realloc(*v, nc * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = (struct seg){a, b};
  return 0;
}

/* Copies of live blocks left where they were moved from or to.  A
 * compaction cut short after a move's BAT switch leaves the block's old
 * place as it was, and one cut short while copying leaves part of a copy:
 * unreferenced, but not blank.  Such a place is recognised (and taken as
 * free) only when it is a copy: the same bitmap as a block in use, and in
 * every sector the bitmap marks present that block's bytes or blank ones
 * (the free space a copy cut short was going into).  One cut
 * short right after the new footer was written has that footer over the
 * first sector of the old place that began at the new end: with a bitmap
 * of one sector, only the present sectors are compared there.  The index
 * keys each block in use by its first present sector (where, and what),
 * and is built only when unreferenced bytes that are not blank turn up. */
struct live_key {
  uint64_t key;
  uint32_t blk, first;
};
struct live_index {
  struct live_key *v;
  size_t n;
  uint32_t *firsts; /* the distinct first present sectors, for a copy without its bitmap */
  size_t nfirsts;
  bool built;
  unsigned misses; /* candidates compared in full that were no copy */
};

/* Bytes that look like a copy by key and bitmap but are not, compared in
 * full, cost up to two blocks' reads each: after this many the rest of a
 * compaction stops looking (a copy is found at its first try). */
#define LIVE_MISSES_MAX 64u

#define LIVE_FIRSTS_MAX 64u /* distinct first sectors tried for a copy without its bitmap */

static uint64_t fnv1a(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* The first sector bitmap bm marks present, or sectors_per_block. */
static uint32_t first_present(const vhd_t *vhd, const uint8_t *bm) {
  bool set;
  uint32_t n = vhd_bitmap_run(bm, 0, vhd->sectors_per_block, &set);
  return set ? 0 : n;
}

/* *key: what data sector s of the block whose span starts at off holds. */
static int sector_key(struct compact *c, uint64_t off, uint32_t s, uint64_t *key) {
  vhd_t *vhd = c->vhd;
  uint8_t sec[512];
  uint64_t at = off + vhd->bitmap_size + (uint64_t)s * 512;
  int r = vhd_io_pread(vhd->fd, sec, sizeof sec, at);
  if (r < 0)
    return vhd_set_err(c->err, r, "%s: reading offset %llu: %s", vhd->path,
                       (unsigned long long)at, strerror(-r));
  *key = fnv1a(sec, sizeof sec);
  return 0;
}

static int live_key_cmp(const void *a, const void *b) {
  const struct live_key *x = a, *y = b;
  if (x->key != y->key)
    return x->key < y->key ? -1 : 1;
  return x->first < y->first ? -1 : x->first > y->first;
}

static int u32_cmp(const void *a, const void *b) {
  const uint32_t *x = a, *y = b;
  return *x < *y ? -1 : *x > *y;
}

static int live_index_build(struct compact *c, struct live_index *ix, const struct blk_ref *kept,
                            size_t nk) {
  vhd_t *vhd = c->vhd;
  ix->built = true;
  ix->v = malloc((nk + 1) * sizeof *ix->v);
  ix->firsts = malloc((nk + 1) * sizeof *ix->firsts);
  if (!ix->v || !ix->firsts)
    return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
  for (size_t k = 0; k < nk; k++) {
    uint8_t *bm;
    uint64_t key;
    int r = vhd_bitmap_get(vhd, kept[k].blk, &bm, c->err);
    if (r < 0)
      return r;
    uint32_t s = first_present(vhd, bm);
    if (s >= vhd->sectors_per_block)
      continue; /* nothing to tell a copy by */
    if ((r = sector_key(c, kept[k].off, s, &key)) < 0)
      return r;
    ix->v[ix->n++] = (struct live_key){key, kept[k].blk, s};
    ix->firsts[ix->nfirsts++] = s;
  }
  qsort(ix->v, ix->n, sizeof *ix->v, live_key_cmp);
  qsort(ix->firsts, ix->nfirsts, sizeof *ix->firsts, u32_cmp);
  size_t w = 0;
  for (size_t i = 0; i < ix->nfirsts; i++)
    if (w == 0 || ix->firsts[w - 1] != ix->firsts[i])
      ix->firsts[w++] = ix->firsts[i];
  ix->nfirsts = MIN(w, (size_t)LIVE_FIRSTS_MAX);
  return 0;
}

static bool sector_blank(const vhd_t *vhd, const uint8_t *sec) {
  return all_zero(sec, 512) || vhd_footer_of_image(sec, vhd->footer_raw);
}

/* 1 when [q, q + span) holds a block in use's present sectors, keyed by
 * key at first, and its bitmap cbm (NULL: the bitmap was overwritten). */
static int copy_matches(struct compact *c, struct live_index *ix, uint64_t q, uint64_t key,
                        uint32_t first, const uint8_t *cbm, uint8_t *buf, uint8_t *buf2) {
  vhd_t *vhd = c->vhd;
  struct live_key probe = {key, 0, first};
  struct live_key *hit = bsearch(&probe, ix->v, ix->n, sizeof *ix->v, live_key_cmp);
  if (!hit)
    return 0;
  while (hit > ix->v && live_key_cmp(hit - 1, &probe) == 0)
    hit--;
  for (; hit < ix->v + ix->n && live_key_cmp(hit, &probe) == 0; hit++) {
    uint8_t *bm;
    int r = vhd_bitmap_get(vhd, hit->blk, &bm, c->err);
    if (r < 0)
      return r;
    if (cbm && memcmp(bm, cbm, vhd->bitmap_size) != 0)
      continue;
    uint64_t live = (uint64_t)vhd->bat[hit->blk] * 512 + vhd->bitmap_size;
    uint64_t copy = q + vhd->bitmap_size;
    bool same = true;
    for (uint32_t s = 0; same && s < vhd->sectors_per_block;) {
      bool set;
      uint32_t e = s + vhd_bitmap_run(bm, s, vhd->sectors_per_block, &set);
      for (uint64_t d = (uint64_t)s * 512; set && same && d < (uint64_t)e * 512;) {
        size_t n = (size_t)MIN((uint64_t)e * 512 - d, (uint64_t)COPY_CHUNK);
        if ((r = vhd_io_pread(vhd->fd, buf, n, live + d)) < 0 ||
            (r = vhd_io_pread(vhd->fd, buf2, n, copy + d)) < 0)
          return vhd_set_err(c->err, r, "%s: reading block %u: %s", vhd->path, hit->blk,
                             strerror(-r));
        /* A copy cut short holds the block's first chunks and, after
         * them, the blank free space it was written into. */
        if (memcmp(buf, buf2, n) != 0)
          for (size_t k = 0; same && k < n; k += 512)
            same = memcmp(buf + k, buf2 + k, 512) == 0 || sector_blank(vhd, buf2 + k);
        d += n;
      }
      s = e;
    }
    if (same)
      return 1;
    ix->misses++;
  }
  return 0;
}

/* 1 when [q, q + span) is a copy of a block in use (see above), else 0. */
static int stale_copy_at(struct compact *c, struct live_index *ix, uint64_t q, uint8_t *buf,
                         uint8_t *buf2) {
  vhd_t *vhd = c->vhd;
  CLEANUP_FREE uint8_t *cbm = malloc(vhd->bitmap_size);
  if (!cbm)
    return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
  int r = vhd_io_pread(vhd->fd, cbm, vhd->bitmap_size, q);
  if (r < 0)
    return vhd_set_err(c->err, r, "%s: reading offset %llu: %s", vhd->path,
                       (unsigned long long)q, strerror(-r));
  uint64_t key;
  /* The bitmap's one sector may be under the footer (written at the new
   * end of the file before the cut). */
  if (vhd->bitmap_size == VHD_FOOTER_SIZE && vhd_footer_of_image(cbm, vhd->footer_raw)) {
    for (size_t i = 0; i < ix->nfirsts; i++) {
      if ((r = sector_key(c, q, ix->firsts[i], &key)) < 0 ||
          (r = copy_matches(c, ix, q, key, ix->firsts[i], NULL, buf, buf2)) != 0)
        return r;
    }
    return 0;
  }
  uint32_t s = first_present(vhd, cbm);
  if (s >= vhd->sectors_per_block)
    return 0;
  if ((r = sector_key(c, q, s, &key)) < 0)
    return r;
  return copy_matches(c, ix, q, key, s, cbm, buf, buf2);
}

struct blank_scan {
  struct live_index ix;
  const struct blk_ref *kept;
  size_t nk;
  uint8_t *buf, *buf2;
  /* The bytes of a gap read ahead (add_blank looks at it a sector at a
   * time, mostly forward): [win_start, win_start + win_len). */
  uint8_t *win;
  uint64_t win_start;
  size_t win_len;
};

#define SCAN_WINDOW (64u * 1024)

/* The len bytes at p (p + len <= b), through the window: one read for up
 * to SCAN_WINDOW bytes of [p, b) rather than one per sector. */
static int scan_sector(const vhd_t *vhd, struct blank_scan *bs, uint64_t p, uint64_t b, size_t len,
                       const uint8_t **sec) {
  if (p < bs->win_start || p + len > bs->win_start + bs->win_len) {
    size_t n = (size_t)MIN(b - p, (uint64_t)SCAN_WINDOW);
    bs->win_len = 0;
    int r = vhd_io_pread(vhd->fd, bs->win, n, p);
    if (r < 0)
      return r;
    bs->win_start = p;
    bs->win_len = n;
  }
  *sec = bs->win + (p - bs->win_start);
  return 0;
}

/* Adds [a, b) to the free segments when nothing in it can be read
 * (vhd_range_holds_nothing): *next is b then, else a.  Only the whole
 * range counts: a walk that stops short may have taken a zero sector in
 * a hole for a block's bitmap and the start of other bytes for its data
 * (a copy, below). */
static int take_nothing(struct compact *c, uint64_t a, uint64_t b, struct seg **v, size_t *n,
                        size_t *cap, uint64_t *next) {
  int r = vhd_range_holds_nothing(c->vhd, a, b);
  if (r < 0)
    return vhd_set_err(c->err, r, "%s: reading offsets %llu to %llu: %s", c->vhd->path,
                       (unsigned long long)a, (unsigned long long)b, strerror(-r));
  *next = r == 1 ? b : a;
  if (r == 1 && a < b && push_seg(v, n, cap, a, b) < 0)
    return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", c->vhd->path);
  return 0;
}

/* Adds the sectors of [a, b) that read blank (zeros, or a copy of the
 * footer) to the free segments, and the spans that are copies of blocks in
 * use (left by a compaction cut short); the others are someone's bytes,
 * not ours to take, and the file may not end before them (*busy_end). */
static int add_blank(struct compact *c, struct blank_scan *bs, uint64_t a, uint64_t b,
                     struct seg **v, size_t *n, size_t *cap, uint64_t *busy_end) {
  vhd_t *vhd = c->vhd;
  /* As far as the range holds nothing, at once: the common case is all
   * blank, or blank but for blocks a crash left before their BAT entry,
   * marking nothing.  Then sector by sector. */
  uint64_t from;
  int r = take_nothing(c, a, b, v, n, cap, &from);
  if (r < 0)
    return r;
  const uint8_t *sec;
  bs->win_len = 0;
  for (uint64_t p = from; r >= 0 && p < b; p += 512) {
    size_t len = (size_t)MIN((uint64_t)512, b - p);
    /* A hole reads as zeros: blank as a whole, with no read. */
    uint64_t hole_end = p < bs->win_start || p >= bs->win_start + bs->win_len
                            ? ROUND_DOWN(vhd_io_hole_end(vhd->fd, p, b), 512)
                            : p;
    if (hole_end > p) {
      if (push_seg(v, n, cap, p, hole_end) < 0)
        return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
      p = hole_end - 512;
      continue;
    }
    r = scan_sector(vhd, bs, p, b, len, &sec);
    if (r < 0)
      break;
    if (len == 512 ? sector_blank(vhd, sec) : all_zero(sec, len)) {
      if (push_seg(v, n, cap, p, p + len) < 0)
        return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
      continue;
    }
    /* A copy's first sectors may be blank (a bitmap's leading zeros) or a
     * copy of the footer (see stale_copy_at): where it starts is tried
     * back over up to a bitmap's length and a sector. */
    if (!bs->ix.built && (r = live_index_build(c, &bs->ix, bs->kept, bs->nk)) < 0)
      return r;
    uint64_t found = UINT64_MAX;
    for (uint64_t q = b - a >= c->span ? MIN(p, b - c->span) : 0;
         bs->ix.n && bs->ix.misses < LIVE_MISSES_MAX && b - a >= c->span &&
         q + vhd->bitmap_size + 512 > p;
         q -= 512) {
      if ((r = stale_copy_at(c, &bs->ix, q, bs->buf, bs->buf2)) < 0)
        return r;
      if (r == 1) {
        found = q;
        break;
      }
      if (q < a + 512)
        break;
    }
    /* A copy whose bitmap the footer overwrote shows nothing before its
     * first present sector, which may lie anywhere in the block (a block
     * whose leading sectors are absent): its start is that far back. */
    for (size_t i = 0; found == UINT64_MAX && r >= 0 && i < bs->ix.nfirsts &&
                       bs->ix.misses < LIVE_MISSES_MAX && vhd->bitmap_size == VHD_FOOTER_SIZE;
         i++) {
      uint64_t back = vhd->bitmap_size + (uint64_t)bs->ix.firsts[i] * 512;
      if (bs->ix.firsts[i] == 0 || p < a + back || p - back + c->span > b)
        continue;
      if ((r = stale_copy_at(c, &bs->ix, p - back, bs->buf, bs->buf2)) == 1)
        found = p - back;
    }
    if (r < 0)
      return r;
    r = 0;
    if (found != UINT64_MAX) {
      if (push_seg(v, n, cap, p, found + c->span) < 0)
        return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
      if ((r = take_nothing(c, found + c->span, b, v, n, cap, &from)) < 0)
        return r;
      p = from - 512;
      continue;
    }
    /* A copy of a parent locator's data (what a relink cut short and run
     * again leaves where the first run wrote) or a header journal, here
     * among other bytes (alone in a range, take_nothing took it above). */
    uint64_t ll = 0;
    if ((r = vhd_stale_copy_len(vhd, p, &ll)) < 0)
      break;
    if (r == 1 && p + ll <= b) {
      uint64_t e = MIN(ROUND_UP(p + ll, 512), b);
      if (push_seg(v, n, cap, p, e) < 0)
        return vhd_set_err(c->err, -ENOMEM, "%s: out of memory", vhd->path);
      p = e - 512;
      r = 0;
      continue;
    }
    r = 0;
    *busy_end = MAX(*busy_end, p + len);
  }
  if (r < 0)
    return vhd_set_err(c->err, r, "%s: reading offsets %llu to %llu: %s", vhd->path,
                       (unsigned long long)a, (unsigned long long)b, strerror(-r));
  return 0;
}

int vhd_compact(const char *path, const struct vhd_compact_opts *o,
                struct vhd_compact_result *res, struct vhd_err *err) {
  /* At the current size, the chain too: a block is freed only where every
   * reader reads zeros, also one that takes the current size past a
   * Virtual PC disk's geometry (see commit.c). */
  struct vhd_open_opts oo = {.flags = o->dry_run ? VHD_OPEN_RDONLY : 0,
                             .size_rule = VHD_SIZE_CURRENT,
                             .warn = o->warn,
                             .warn_opaque = o->opaque};
  vhd_t *vhd;
  memset(res, 0, sizeof *res);
  int r = vhd_open(path, &oo, &vhd, err);
  if (r < 0)
    return r;
  struct compact c = {vhd, o, err, 0, 0, 0};
  CLEANUP_FREE uint8_t *buf = NULL;
  CLEANUP_FREE struct blk_ref *kept = NULL;
  CLEANUP_FREE struct seg *free_s = NULL;
  CLEANUP_FREE uint64_t *dest = NULL;
  CLEANUP_FREE uint8_t *buf2 = NULL;
  CLEANUP_FREE uint32_t *freed = NULL;
  struct blank_scan scan = {0};
  res->file_size_before = res->file_size_after = vhd->file_size;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = vhd_set_err(err, -EINVAL, "%s: a fixed image has no blocks to compact", path);
    goto out;
  }
  if (vhd->footer.saved_state && !o->dry_run && !o->ignore_saved_state) {
    r = vhd_set_err(err, -EPERM,
                    "%s: the footer's saved-state flag is set (a virtual machine's saved state "
                    "depends on this disk), and the VHD format forbids compacting it",
                    path);
    goto out;
  }
  c.span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  buf = malloc(MAX((uint64_t)vhd->block_size, (uint64_t)COPY_CHUNK));
  kept = malloc(((size_t)vhd->allocated_blocks + 1) * sizeof *kept);
  freed = malloc(((size_t)vhd->allocated_blocks + 1) * sizeof *freed);
  if (!buf || !kept || !freed) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    goto out;
  }

  /* 1. Blocks of zeros. */
  size_t nk = 0, nf = 0, capf = 0, nfb = 0;
  c.total = (uint64_t)vhd->allocated_blocks * c.span;
  for (uint32_t i = 0; i < vhd->max_entries; i++) {
    if (vhd->bat[i] == VHD_BAT_UNUSED)
      continue;
    uint64_t off = (uint64_t)vhd->bat[i] * 512;
    if ((r = block_blank(&c, i, buf)) < 0)
      goto out;
    progress(&c, c.span);
    if (r == 1 && vhd_batmap_full(vhd, i)) {
      /* Xen's batmap holds it full; freeing it would leave tapdisk a bit
       * for a block that is gone (batmap.c). */
      res->blocks_kept_batmap++;
      r = 0;
    }
    if (r == 0) {
      kept[nk++] = (struct blk_ref){off, i};
      continue;
    }
    res->blocks_freed++;
    if (push_seg(&free_s, &nf, &capf, off, off + c.span) < 0) {
      r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
      goto out;
    }
    freed[nfb++] = i;
  }
  if (!o->dry_run && res->blocks_freed) {
    /* Zeros first, bitmaps included, while the BAT still points there:
     * a block whose bitmap marks nothing reads as one whose entry is
     * unused (the parent's sectors show in both, and they read zeros
     * here), so either order on disk reads the same.  Once unreferenced,
     * the space is blank to any later look (this compaction cut short,
     * check --repair), never someone's bytes. */
    for (size_t i = 0; i < nf; i++)
      if ((r = vhd_io_zero(vhd, free_s[i].start, free_s[i].end - free_s[i].start)) < 0) {
        vhd_set_err(err, r, "%s: zeroing a block of zeros at offset %llu: %s", path,
                    (unsigned long long)free_s[i].start, strerror(-r));
        goto out;
      }
    if ((r = vhd_io_sync(vhd)) < 0) {
      vhd_set_err(err, r, "%s: fdatasync after zeroing blocks of zeros: %s", path, strerror(-r));
      goto out;
    }
    for (size_t k = 0; k < nfb; k++) {
      uint32_t i = freed[k];
      vhd->bat[i] = VHD_BAT_UNUSED;
      vhd_bitmap_free(vhd, vhd->bitmaps[i]);
      vhd->bitmaps[i] = NULL;
      vhd->allocated_blocks--;
      vhd_bat_mark_dirty(vhd, i);
    }
    if ((r = vhd_flush(vhd, err)) < 0)
      goto out;
  }

  /* 2. Free space after the structures: freed blocks, and blank gaps
   * between the blocks kept. */
  if (nk)
    qsort(kept, nk, sizeof *kept, ref_cmp);
  size_t nfreed = nf;
  if (nfreed)
    qsort(free_s, nfreed, sizeof *free_s, seg_cmp);
  scan.kept = kept;
  scan.nk = nk;
  scan.buf = buf;
  scan.buf2 = buf2 = malloc(COPY_CHUNK);
  scan.win = malloc(SCAN_WINDOW);
  if (!buf2 || !scan.win) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    goto out;
  }
  /* Free space is looked for only after the structures. */
  uint64_t floor = vhd_structures_end(vhd), footer = vhd->footer_offset;
  uint64_t busy_end = floor; /* the file may not end before this */
  struct seg loc[8];
  size_t nl = locator_areas(vhd, floor, loc), li = 0;
  uint64_t cur = floor;
  size_t fi = 0;
  /* What lies between the blocks kept and the locators, in file order. */
  for (size_t k = 0; k <= nk && cur < footer;) {
    uint64_t next = k < nk ? kept[k].off : footer, next_end = k < nk ? next + c.span : footer;
    bool is_loc = li < nl && loc[li].start < next;
    if (is_loc) {
      next = loc[li].start;
      next_end = loc[li++].end;
    } else {
      k++;
    }
    if (next < cur) { /* inside the structures' range, or overlapping */
      cur = MAX(cur, next_end);
      continue;
    }
    /* [cur, next): freed blocks and other bytes. */
    while (cur < next) {
      while (fi < nfreed && free_s[fi].end <= cur)
        fi++;
      uint64_t stop = next;
      if (fi < nfreed && free_s[fi].start <= cur) {
        cur = MIN(free_s[fi].end, next); /* already listed */
        continue;
      }
      if (fi < nfreed && free_s[fi].start < stop)
        stop = free_s[fi].start;
      if ((r = add_blank(&c, &scan, cur, stop, &free_s, &nf, &capf, &busy_end)) < 0)
        goto out;
      cur = stop;
    }
    cur = next_end;
  }
  /* Only free space past the structures counts, and none a locator's
   * area overlaps (a freed block may lie in room a locator reserves). */
  size_t w = 0;
  for (size_t i = 0; i < nf; i++) {
    bool clear = free_s[i].start >= floor;
    for (size_t j = 0; clear && j < nl; j++)
      clear = free_s[i].end <= loc[j].start || free_s[i].start >= loc[j].end;
    if (clear)
      free_s[w++] = free_s[i];
  }
  nf = w;
  if (nf)
    qsort(free_s, nf, sizeof *free_s, seg_cmp);

  /* Moves: the lowest free slots take the highest blocks. */
  dest = calloc(nk + 1, sizeof *dest);
  if (!dest) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    goto out;
  }
  size_t top = nk, si = 0;
  uint64_t slot = nf ? ROUND_UP(free_s[0].start, 512) : 0;
  while (top > 0 && si < nf) {
    /* Merge touching free segments into the current one. */
    uint64_t seg_end = free_s[si].end;
    while (si + 1 < nf && free_s[si + 1].start <= seg_end) {
      si++;
      seg_end = MAX(seg_end, free_s[si].end);
    }
    /* Moved blocks get their data 4 KiB-aligned, as new blocks do (see
     * vhd_block_place), where the free space has room for that; a block
     * that is not aligned where it is may also go back to back. */
    uint64_t at = vhd_block_place(vhd, slot);
    if (at + c.span > seg_end && vhd_block_place(vhd, kept[top - 1].off) != kept[top - 1].off)
      at = slot;
    if (at + c.span > seg_end) {
      if (++si < nf)
        slot = ROUND_UP(free_s[si].start, 512);
      continue;
    }
    if (at >= kept[top - 1].off)
      break;
    dest[top - 1] = at;
    slot = at + c.span;
    top--;
    res->blocks_moved++;
  }
  uint64_t end = busy_end;
  for (size_t k = 0; k < nk; k++)
    end = MAX(end, (dest[k] ? dest[k] : kept[k].off) + c.span);
  end = ROUND_UP(end, 512);
  uint64_t loc_dst = 0, loc_s = 0, loc_e = 0;
  unsigned loc_mask = locators_past(vhd, end, &loc_dst, &loc_s, &loc_e);
  /* Blocks move around parent locator data (step 2); the file ends past
   * it until step 4 has moved what lies past the blocks. */
  for (size_t i = 0; i < nl; i++)
    end = MAX(end, loc[i].end);
  uint64_t final_end = loc_mask ? loc_dst + (loc_e - loc_s) : end;
  if (final_end < footer)
    res->file_size_after = final_end + VHD_FOOTER_SIZE;
  if (o->dry_run) {
    res->locators_moved = (uint32_t)__builtin_popcount(loc_mask);
    r = 0;
    goto out;
  }

  c.done = 0;
  c.total = (uint64_t)res->blocks_moved * c.span;
  for (size_t k = top; k < nk; k++) {
    uint8_t *bm;
    if ((r = vhd_bitmap_get(vhd, kept[k].blk, &bm, err)) < 0)
      goto out;
    for (uint64_t d = 0; d < c.span;) {
      size_t n = (size_t)MIN(c.span - d, (uint64_t)COPY_CHUNK);
      if ((r = vhd_io_pread(vhd->fd, buf, n, kept[k].off + d)) < 0) {
        vhd_set_err(err, r, "%s: reading block %u at offset %llu: %s", path, kept[k].blk,
                    (unsigned long long)(kept[k].off + d), strerror(-r));
        goto out;
      }
      /* Sectors absent by the bitmap read as zeros in the copy, also to
       * readers that ignore bitmaps, as in every block the engine writes. */
      for (uint64_t i = MAX(d, (uint64_t)vhd->bitmap_size); i < d + n; i += 512)
        if (!vhd_bit_get(bm, (uint32_t)((i - vhd->bitmap_size) / 512)))
          memset(buf + (i - d), 0, 512);
      if ((r = vhd_io_pwrite(vhd, buf, n, dest[k] + d)) < 0) {
        vhd_set_err(err, r, "%s: moving block %u to offset %llu: %s", path, kept[k].blk,
                    (unsigned long long)(dest[k] + d), strerror(-r));
        goto out;
      }
      d += n;
      progress(&c, n);
    }
  }
  if (res->blocks_moved) {
    if ((r = vhd_io_sync(vhd)) < 0) {
      vhd_set_err(err, r, "%s: fdatasync after moving blocks: %s", path, strerror(-r));
      goto out;
    }
    for (size_t k = top; k < nk; k++) {
      vhd->bat[kept[k].blk] = (uint32_t)(dest[k] / 512);
      vhd_bat_mark_dirty(vhd, kept[k].blk);
    }
    /* The flush writes the BAT sectors and syncs; the blocks' bitmaps are
     * not dirty, their data is durable already. */
    if ((r = vhd_flush(vhd, err)) < 0)
      goto out;
  }

  /* 3. The footer down to the new end, then the cut: right after the
   * switch, so that the old places past the end go with it (cut short
   * before, a rerun knows them as copies of blocks in use). */
  if (end < footer) {
    if ((r = vhd_io_footer_cut(vhd, end, false)) < 0) {
      vhd_set_err(err, r, "%s: moving the footer to offset %llu: %s", path,
                  (unsigned long long)end, strerror(-r));
      goto out;
    }
  }
  /* Old places left below the end are free now: zeros, for the same
   * reason as freed blocks. */
  for (size_t k = top; k < nk; k++) {
    if (kept[k].off >= end)
      continue;
    uint64_t len = MIN(c.span, end - kept[k].off);
    if ((r = vhd_io_zero(vhd, kept[k].off, len)) < 0) {
      vhd_set_err(err, r, "%s: zeroing the old place of block %u at offset %llu: %s", path,
                  kept[k].blk, (unsigned long long)kept[k].off, strerror(-r));
      goto out;
    }
  }
  if (top < nk && (r = vhd_io_sync(vhd)) < 0) {
    vhd_set_err(err, r, "%s: fdatasync after zeroing old places: %s", path, strerror(-r));
    goto out;
  }
  /* 4. After the cut and the zeroing: the copy goes into blank space. */
  if (loc_mask) {
    if ((r = locators_move_down(&c, loc_mask, loc_dst, loc_s, loc_e, buf)) < 0)
      goto out;
    res->locators_moved = (uint32_t)__builtin_popcount(loc_mask);
  }
  r = 0;
out:
  free(scan.ix.v);
  free(scan.ix.firsts);
  free(scan.win);
  /* Everything written is synced; the handle's floors and window describe
   * the old layout, so it is dropped rather than closed. */
  vhd_abandon(vhd);
  return r;
}
