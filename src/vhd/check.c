/* check.c: consistency check and safe repair. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

struct check {
  const struct vhd_check_opts *opts;
  int found;
  /* Warnings reported and not repaired since: a repair clears the
   * warning bit only when it took the last one away. */
  unsigned warnings;
  /* What opening said, by hash: the chain is opened after the image alone,
   * and says again what that open said of the image. */
  uint64_t said[32];
  unsigned n_said;
};

static void report(struct check *c, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct check *c, int kind, const char *fmt, ...) {
  c->found |= kind;
  if (kind & VHD_CHECK_WARNINGS)
    c->warnings++;
  if (!c->opts || !c->opts->report)
    return;
  char msg[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *level = kind == 0                 ? "note"
                      : kind & VHD_CHECK_CORRUPT  ? "error"
                      : kind & VHD_CHECK_LEAKS  ? "leak"
                      : kind & VHD_CHECK_REPAIRED ? "repaired"
                                                  : "warning";
  c->opts->report(c->opts->opaque, level, msg);
}

static void collect_warning(void *opaque, const char *msg) {
  struct check *c = opaque;
  uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
  for (const char *p = msg; *p; p++)
    h = (h ^ (unsigned char)*p) * 0x100000001b3u;
  for (unsigned i = 0; i < c->n_said; i++)
    if (c->said[i] == h)
      return;
  if (c->n_said < ARRAY_SIZE(c->said))
    c->said[c->n_said++] = h;
  report(c, VHD_CHECK_WARNINGS, "%s", msg);
}

/* A repair that took away the one warning open gave for what it fixed. */
static void warning_repaired(struct check *c) {
  if (c->warnings > 0 && --c->warnings == 0)
    c->found &= ~VHD_CHECK_WARNINGS;
}

/* Parent locators whose data lay past the footer (open forgot them and
 * warned once each) go from the header on disk: only their entries and
 * the checksum change, every other byte stays as it was.  Their room past
 * the footer is then nobody's. */
static void zero_stale_entries(uint8_t *raw, void *arg) {
  const vhd_t *vhd = arg;
  for (int i = 0; i < 8; i++)
    if (vhd->stale_locators & (1u << i))
      memset(raw + VHD_LOCATOR_ENTRY(i), 0, 24);
}

static void clear_stale_locators(struct check *c, vhd_t *vhd) {
  struct vhd_err e = {{0}};
  if (vhd_header_rewrite(vhd, zero_stale_entries, vhd, &e) < 0) {
    report(c, VHD_CHECK_CORRUPT,
           "%s (clearing parent locators that lie beyond the end of the file)", e.msg);
    return;
  }
  for (int i = 0; i < 8; i++)
    if (vhd->stale_locators & (1u << i)) {
      warning_repaired(c);
      report(c, VHD_CHECK_REPAIRED,
             "%s: cleared parent locator %d, whose data lay beyond the end of the file", vhd->path,
             i);
    }
  vhd->stale_locators = 0;
}

struct span {
  uint64_t start, end;
};
static int span_cmp(const void *a, const void *b) {
  const struct span *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

int vhd_check(const char *path, const struct vhd_check_opts *opts, struct vhd_err *err) {
  struct check c = {.opts = opts};
  bool repair = opts && opts->repair;
  struct vhd_open_opts oo = {
      .flags = VHD_OPEN_NOPARENT | (repair ? 0 : VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK),
      .warn = collect_warning,
      .warn_opaque = &c,
  };
  vhd_t *vhd = NULL;
  struct vhd_err oe;
  int r = vhd_open(path, &oo, &vhd, &oe);
  if (r < 0) {
    if (r == -EBUSY || r == -ENOENT || r == -EACCES || r == -EPERM)
      return vhd_set_err(err, r, "%s", oe.msg);
    report(&c, VHD_CHECK_CORRUPT, "%s", oe.msg);
    return c.found;
  }
  if (vhd->footer_short && repair) {
    /* Written whole where it starts: the file gains the missing byte. */
    uint64_t pos;
    r = vhd_io_fixed_footer_write(vhd, vhd->footer_raw, &pos);
    if (r < 0) {
      report(&c, VHD_CHECK_CORRUPT, "%s: writing the 511-byte footer whole at offset %llu failed: %s",
             path, (unsigned long long)pos, strerror(-r));
    } else {
      warning_repaired(&c);
      report(&c, VHD_CHECK_REPAIRED, "%s: wrote the 511-byte footer whole (512 bytes)", path);
    }
  }
  if (vhd->footer_copy_used) {
    if (repair) {
      /* Open checked that every structure ends by the data area's end: a
       * file cut inside its footer gets the footer there, on the sector
       * boundary the cut left, and the file ends right after it. */
      uint64_t pos = vhd->data_end;
      r = vhd_io_pwrite(vhd, vhd->footer_raw, VHD_FOOTER_SIZE, pos);
      if (r == 0)
        r = vhd_io_truncate(vhd, pos + VHD_FOOTER_SIZE);
      if (r == 0)
        r = vhd_io_sync(vhd);
      if (r == 0)
        vhd->file_size = pos + VHD_FOOTER_SIZE;
      if (r < 0) {
        report(&c, VHD_CHECK_CORRUPT, "%s: rewriting the trailing footer failed: %s", path,
               strerror(-r));
      } else {
        warning_repaired(&c);
        report(&c, VHD_CHECK_REPAIRED, "%s: rewrote the damaged trailing footer from the copy at 0",
               path);
      }
    } else {
      report(&c, VHD_CHECK_CORRUPT,
             "%s: the trailing footer is damaged (the copy at offset 0 is intact)", path);
    }
  }
  if (vhd->header_journal && repair) {
    /* Open warned of it, and a read-write open has written it back. */
    warning_repaired(&c);
    report(&c, VHD_CHECK_REPAIRED,
           "%s: wrote the dynamic header back from the copy an interrupted rewrite journaled "
           "at offset %llu",
           path, (unsigned long long)vhd->header_journal);
  }
  if (vhd->stale_locators && repair)
    clear_stale_locators(&c, vhd);
  if (vhd->type != VHD_TYPE_FIXED) {
    r = vhd_io_footer_copy_sync(vhd, repair);
    if (r == 1 && repair)
      report(&c, VHD_CHECK_REPAIRED, "%s: rewrote the footer copy at offset 0", path);
    else if (r != 0)
      report(&c, VHD_CHECK_LEAKS,
             "%s: the footer copy at offset 0 differs from the trailing footer%s%s", path,
             r < 0 ? "; rewriting it failed: " : "", r < 0 ? strerror(-r) : "");
    /* Leaked space: anything between the structures and the trailing footer
     * that nothing references (blocks freed by trims, a crash mid-allocation). */
    size_t n = 0;
    CLEANUP_FREE struct span *sp = malloc(((size_t)vhd->allocated_blocks + 13) * sizeof *sp);
    if (!sp) {
      vhd_free(vhd);
      return vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    }
    sp[n++] = (struct span){0, VHD_FOOTER_SIZE};
    sp[n++] = (struct span){vhd->header_offset, vhd->header_offset + VHD_HEADER_SIZE};
    sp[n++] = (struct span){vhd->header.table_offset,
                            vhd->header.table_offset + ROUND_UP((uint64_t)vhd->max_entries * 4, 512)};
    if (vhd->type == VHD_TYPE_DIFFERENCING)
      for (int i = 0; i < 8; i++) {
        const struct vhd_locator *l = &vhd->header.locators[i];
        if (l->code != VHD_PLAT_NONE && l->data_length)
          sp[n++] = (struct span){l->data_offset, vhd_locator_area_end(l)};
      }
    if (vhd->batmap) {
      sp[n++] = (struct span){vhd->batmap_header_offset, vhd->batmap_header_offset + 512};
      sp[n++] = (struct span){vhd->batmap_offset, vhd->batmap_offset + vhd->batmap_len};
    }
    uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
    for (uint32_t i = 0; i < vhd->max_entries; i++)
      if (vhd->bat[i] != VHD_BAT_UNUSED)
        sp[n++] = (struct span){(uint64_t)vhd->bat[i] * 512, (uint64_t)vhd->bat[i] * 512 + span};
    qsort(sp, n, sizeof *sp, span_cmp);
    uint64_t covered = 0, leaked = 0, leaked_extents = 0, sparse_free = 0;
    uint64_t first_block = UINT64_MAX;
    for (uint32_t i = 0; i < vhd->max_entries; i++)
      if (vhd->bat[i] != VHD_BAT_UNUSED)
        first_block = MIN(first_block, (uint64_t)vhd->bat[i] * 512);
    for (size_t i = 0; i < n; i++) {
      /* Gaps before the first block are padding some writers use: not leaks. */
      if (sp[i].start > covered && covered >= MIN(first_block, vhd->file_size) &&
          sp[i].start - covered >= span) {
        /* Freed blocks are punched: as long as they hold no data they
         * cost nothing. */
        uint64_t gap = sp[i].start - covered;
        /* Punching a block leaves at most the pages it shares with its
         * neighbours allocated. */
        bool held = vhd_io_allocated_bytes(vhd->fd, covered, gap) > (gap / span + 1) * 8192;
        /* Nothing any reader can see (zeros, footers of this image, blocks
         * a crash left unreferenced with nothing marked present): --repair
         * punches it out.  Other bytes stay, as in the tail. */
        if (held && repair && vhd_range_holds_nothing(vhd, covered, sp[i].start) == 1) {
          int pr = vhd_io_punch(vhd, covered, gap);
          if (pr >= 0 && (pr = vhd_io_sync(vhd)) == 0) {
            report(&c, VHD_CHECK_REPAIRED,
                   "%s: punched out %llu unreferenced bytes between blocks at offset %llu (nothing "
                   "any reader can see)",
                   path, (unsigned long long)gap, (unsigned long long)covered);
            held = false;
          } else {
            report(&c, 0, "%s: punching out %llu blank bytes at offset %llu failed: %s", path,
                   (unsigned long long)gap, (unsigned long long)covered, strerror(-pr));
          }
        }
        if (held) {
          leaked += sp[i].start - covered;
          leaked_extents++;
        } else {
          sparse_free += sp[i].start - covered;
        }
      }
      covered = MAX(covered, sp[i].end);
    }
    uint64_t data_end = vhd->data_end;
    uint64_t tail = data_end > covered ? data_end - covered : 0;
    if (sparse_free)
      report(&c, 0, "%s: %llu bytes of unreferenced space between blocks (sparse: it costs no disk space)",
             path, (unsigned long long)sparse_free);
    if (leaked)
      report(&c, VHD_CHECK_LEAKS, "%s: %llu bytes in %llu unreferenced block-sized extents", path,
             (unsigned long long)leaked, (unsigned long long)leaked_extents);
    /* The tail can be cut only when it holds nothing: zeros (never
     * written, or zeroed), footers of this image (a crash right after the
     * footer moved for new blocks leaves the old one), and blocks a crash
     * left before their BAT entry with nothing marked present.  Other
     * bytes are not known to be the engine's, and a cut must not lose what
     * another writer (or a crash) left there. */
    int tail_blank = tail >= 512 ? vhd_range_holds_nothing(vhd, covered, data_end) : 0;
    if (tail >= 512 && tail_blank != 1) {
      report(&c, VHD_CHECK_LEAKS, "%s: %llu unused bytes before the trailing footer hold data%s",
             path, (unsigned long long)tail,
             repair ? ": left in place (they may belong to another tool)" : "");
    } else if (tail >= 512 && repair) {
      r = vhd_io_footer_cut(vhd, ROUND_UP(covered, 512), false);
      if (r < 0)
        report(&c, VHD_CHECK_CORRUPT, "%s: reclaiming the unused tail failed: %s", path,
               strerror(-r));
      else
        report(&c, VHD_CHECK_REPAIRED, "%s: reclaimed %llu unused bytes before the footer", path,
               (unsigned long long)tail);
    } else if (tail >= 512) {
      bool small = vhd_io_allocated_bytes(vhd->fd, covered, tail) <= 8192;
      if (small && vhd_io_range_is_blank(vhd->fd, covered, tail, vhd->footer_raw) != 1) {
        /* Nothing a reader sees, but not blank either: copies a relink or
         * a header rewrite cut short left (vhd_stale_copy_len), or orphan
         * blocks.  (A tail holding more than 8 KiB is not read again to tell.) */
        report(&c, 0,
               "%s: %llu unused bytes before the trailing footer hold only what no reader sees "
               "(what a crash left; --repair gives them back)",
               path, (unsigned long long)tail);
      } else if (small) {
        /* Reserved, never written: the allocation window of a server that
         * has the image open, or one a crash left.  It costs no disk space. */
        report(&c, 0,
               "%s: %llu bytes reserved for new blocks before the trailing footer (sparse; given "
               "back on close or by --repair)",
               path, (unsigned long long)tail);
      } else {
        report(&c, VHD_CHECK_LEAKS, "%s: %llu unused bytes before the trailing footer (zeros)",
               path, (unsigned long long)tail);
      }
    }
    /* Every bitmap must be readable, and every block a Xen batmap marks
     * full must be (tapdisk reads it whole, vhdnbd by its bitmap). */
    for (uint32_t i = 0; i < vhd->max_entries; i++) {
      bool marked = vhd_batmap_full(vhd, i);
      if (vhd->bat[i] == VHD_BAT_UNUSED) {
        if (marked)
          report(&c, VHD_CHECK_WARNINGS,
                 "%s: the Xen batmap marks unallocated block %u full (vhd-util check calls "
                 "that an error)",
                 path, i);
        continue;
      }
      uint8_t *bm;
      struct vhd_err be;
      if (vhd_bitmap_get(vhd, i, &bm, &be) < 0) {
        report(&c, VHD_CHECK_CORRUPT, "%s", be.msg);
        continue;
      }
      bool set;
      if (marked && (vhd_bitmap_run(bm, 0, vhd->sectors_per_block, &set) !=
                         vhd->sectors_per_block ||
                     !set))
        report(&c, VHD_CHECK_WARNINGS,
               "%s: the Xen batmap marks block %u full but its sector bitmap is not: tapdisk "
               "reads sectors of this image that vhdnbd reads from %s",
               path, i, vhd->type == VHD_TYPE_DIFFERENCING ? "the parent" : "zeros");
      vhd_bitmap_free(vhd, vhd->bitmaps[i]); /* keep memory flat on big images */
      vhd->bitmaps[i] = NULL;
    }
    if (vhd->type == VHD_TYPE_DIFFERENCING) {
      vhd_t *full = NULL;
      struct vhd_open_opts po = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                                 .warn = collect_warning, .warn_opaque = &c};
      struct vhd_err pe;
      if (vhd_open(path, &po, &full, &pe) < 0)
        report(&c, VHD_CHECK_CORRUPT, "%s", pe.msg);
      else
        vhd_free(full);
    }
  }
  vhd_free(vhd);
  if (c.found & VHD_CHECK_REPAIRED)
    c.found &= ~VHD_CHECK_LEAKS;
  return c.found;
}
