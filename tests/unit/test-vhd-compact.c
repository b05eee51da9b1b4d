/* test-vhd-compact.c: vhd_compact against an in-memory model, with a crash
 * at every I/O point.
 *
 * A dynamic image holds blocks of data, blocks of written zeros, a gap of
 * zeros nothing refers to (free) and a gap of someone else's bytes (not
 * free: it must survive byte for byte, and the file may not end before
 * it).  A differencing child holds zeros over parent data (they stay),
 * zeros over parent zeros (freed) and data.  For every n the compaction
 * runs on a fresh copy with the power cut after n writes, syncs, truncates
 * or punches, with what reached the page cache kept or the writes since the
 * last sync lost; after each crash the image must read the model, have
 * nothing vhd_check calls corrupt, keep the foreign bytes, and a second
 * vhd_compact must succeed with the same content.  The run without a fault
 * must give the expected counts and file size, and --dry-run must have
 * predicted them without changing a byte.  A child whose parent locator
 * data lies past its blocks must have it moved down after them, with the
 * header pointing at the whole data at every crash point. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define BS 4096u
#define SPAN (BS + 512u)
#define SIZE (256u * 1024)

static uint8_t model[SIZE];
/* Block size of the adjacent cases (orphan() zeroes a block of it). */
static uint32_t adjacent_bs = BS;
static uint64_t foreign_off; /* file offset of the foreign bytes, 0: none */
static uint8_t foreign[SPAN];

static void put(vhd_t *v, uint64_t off, size_t len, int byte) {
  struct vhd_err err = {{0}};
  CLEANUP_FREE uint8_t *buf = t_xmalloc(len);
  if (byte < 0)
    t_fill_nonzero(buf, len);
  else
    memset(buf, byte, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, buf, len);
}

static uint64_t bat_entry_offset(const char *path, uint32_t blk, uint64_t *entry_pos) {
  vhd_t *v = t_open(path, true);
  struct vhd_info info;
  vhd_get_info(v, &info);
  vhd_close(v, NULL);
  uint8_t e[4];
  *entry_pos = info.bat_offset + (uint64_t)blk * 4;
  t_pread_file(path, e, 4, *entry_pos);
  return ((uint64_t)e[0] << 24 | (uint64_t)e[1] << 16 | (uint64_t)e[2] << 8 | e[3]) * 512;
}

/* Drops block blk from the BAT by hand, as another tool might leave it. */
static uint64_t orphan(const char *path, uint32_t blk) {
  uint64_t pos, off = bat_entry_offset(path, blk, &pos);
  static const uint8_t unused[4] = {0xff, 0xff, 0xff, 0xff};
  t_pwrite_file(path, unused, 4, pos);
  memset(model + (uint64_t)blk * adjacent_bs, 0, adjacent_bs);
  return off;
}

static void build_dynamic(const char *path) {
  struct vhd_err err = {{0}};
  memset(model, 0, sizeof model);
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  put(v, 0 * BS, BS, -1);        /* 0: data */
  put(v, 1 * BS, BS, 0);         /* 1: zeros: freed */
  put(v, 2 * BS + 512, 512, -1); /* 2: one sector of data */
  put(v, 3 * BS, BS, -1);        /* 3: foreign bytes once orphaned */
  put(v, 4 * BS, BS, 0);         /* 4: a gap of zeros once orphaned */
  put(v, 5 * BS, 1024, 0);       /* 5: zeros in some sectors: freed */
  put(v, 9 * BS, BS, -1);        /* 9..12: data, moved down */
  put(v, 10 * BS, BS, -1);
  put(v, 11 * BS, 2048, -1);
  put(v, 12 * BS, BS, 0);        /* 12: zeros at the end: freed */
  put(v, 13 * BS, BS, -1);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  foreign_off = orphan(path, 3);
  t_pread_file(path, foreign, SPAN, foreign_off);
  uint64_t gap = orphan(path, 4);
  static const uint8_t zeros[512];
  t_pwrite_file(path, zeros, 512, gap); /* its bitmap: now all zeros */
}

/* Free space in touching pieces (a freed block, then a gap of zeros), a
 * block in use, then another freed block: moves must stop at the block in
 * use, not treat everything up to the last piece as free.  With 4 KiB
 * blocks each block has a blank gap before it (its data is aligned), with
 * 2 KiB blocks none: the pieces touch in both odd and even numbers. */
static void build_adjacent_bs(const char *path, uint32_t bs) {
  struct vhd_err err = {{0}};
  memset(model, 0, sizeof model);
  adjacent_bs = bs;
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, bs, true, NULL);
  vhd_t *v = t_open(path, false);
  put(v, 0 * bs, bs, -1); /* 0: data */
  put(v, 1 * bs, bs, 0);  /* 1: zeros: freed */
  put(v, 2 * bs, bs, 0);  /* 2: a gap of zeros once orphaned */
  put(v, 3 * bs, bs, -1); /* 3: data, stays */
  put(v, 4 * bs, bs, 0);  /* 4: zeros: freed */
  put(v, 5 * bs, bs, -1); /* 5, 6, 7: data, moved into 4, 2 and 1 */
  put(v, 6 * bs, bs, -1);
  put(v, 7 * bs, bs, -1);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  foreign_off = 0;
  uint64_t gap = orphan(path, 2);
  static const uint8_t zeros[512];
  t_pwrite_file(path, zeros, 512, gap);
  adjacent_bs = BS;
}

static void build_adjacent(const char *path) { build_adjacent_bs(path, BS); }
static void build_adjacent_packed(const char *path) { build_adjacent_bs(path, 2048); }

static const char *parent_path;

static void build_differencing(const char *path) {
  struct vhd_err err = {{0}};
  memset(model, 0, sizeof model);
  foreign_off = 0;
  remove(parent_path);
  t_create(parent_path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *p = t_open(parent_path, false);
  put(p, 0, 4 * BS, -1); /* blocks 0-3 */
  T_OK(vhd_close(p, &err), &err, "vhd_close");
  t_create(path, VHD_TYPE_DIFFERENCING, 0, BS, false, parent_path);
  vhd_t *v = t_open(path, false);
  put(v, 0, BS, 0);          /* zeros over parent data: stay */
  put(v, 1 * BS + 512, 512, 0); /* one zero sector over parent data: stays */
  put(v, 5 * BS, BS, 0);     /* zeros over zeros: freed */
  put(v, 6 * BS, BS, -1);    /* data */
  put(v, 7 * BS, BS, 0);     /* freed */
  put(v, 8 * BS, BS, -1);    /* data, moved down */
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* A child whose parent locator data a rebase -u moved past its blocks, as
 * a rebase does when it finds no room among them: blocks freed below it
 * let the compaction move the data down after the blocks (step 4). */
static struct {
  uint32_t code, len;
  uint64_t off;
  uint8_t data[66 * 1024]; /* a path, or another platform's longer data */
} locs[8];
static int n_locs;
/* Whether the locators must stay where they are (no room to move them
 * into, or data the compaction may not move). */
static bool locs_stay;

/* Each locator the header lists, with the bytes its data holds. */
static int read_locators(const char *path, __typeof__(locs) out) {
  struct t_locator l[8];
  t_read_locators(path, l);
  int n = 0;
  for (int i = 0; i < 8; i++) {
    if (!l[i].code)
      continue;
    T_ASSERT(l[i].len <= sizeof out[n].data, "locator %d: %u bytes", i, l[i].len);
    out[n].code = l[i].code;
    out[n].off = l[i].off;
    out[n].len = l[i].len;
    t_pread_file(path, out[n].data, l[i].len, l[i].off);
    n++;
  }
  return n;
}

/* Where the last block the BAT points to ends, by the format's layout. */
static uint64_t blocks_end(const char *path) {
  uint8_t h[1024];
  t_pread_file(path, h, sizeof h, 512);
  uint64_t bat = t_be64(h + 16), end = 0;
  uint32_t n = t_be32(h + 28), bs = t_be32(h + 32);
  uint64_t span = ((uint64_t)(bs / 512 + 7) / 8 + 511) / 512 * 512 + bs;
  CLEANUP_FREE uint8_t *e = t_xmalloc((size_t)n * 4);
  t_pread_file(path, e, (size_t)n * 4, bat);
  for (uint32_t i = 0; i < n; i++)
    if (t_be32(e + 4 * i) != 0xFFFFFFFFu)
      end = MAX(end, (uint64_t)t_be32(e + 4 * i) * 512 + span);
  return end;
}

/* With nzero blocks of zeros over parent zeros after block 8: freed, they
 * leave that much more room below the locator data. */
static void build_locators_past_n(const char *path, uint32_t nzero) {
  build_differencing(path);
  struct vhd_err err = {{0}};
  if (nzero) {
    vhd_t *v = t_open(path, false);
    put(v, 10 * BS, (size_t)nzero * BS, 0);
    T_OK(vhd_close(v, &err), &err, "vhd_close");
  }
  struct vhd_rebase_opts o = {.new_parent = parent_path, .unsafe = true};
  struct vhd_rebase_result res;
  T_OK(vhd_rebase(path, &o, &res, &err), &err, "vhd_rebase -u onto the same parent");
  n_locs = read_locators(path, locs);
  T_ASSERT(n_locs == 2, "%d parent locators after the rebase", n_locs);
}

static void build_locators_past(const char *path) { build_locators_past_n(path, 0); }

static void store32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* The dynamic header h (1024 bytes, at offset 512) written back with its
 * checksum. */
static void header_write(const char *path, uint8_t *h) { t_write_header(path, h, 512); }

/* locs[0..n_locs) laid out again by hand, as another tool might leave
 * them: from where the first starts (or the footer, for none in the file
 * yet), back to back, each with the room space[k] (bytes), the footer
 * right after the last.  The header lists them in that order. */
static void relay_locators(const char *path, const uint32_t *space) {
  uint8_t h[1024], foot[512];
  uint64_t size = t_file_size(path), at = size - 512;
  t_pread_file(path, foot, sizeof foot, at);
  t_pread_file(path, h, sizeof h, 512);
  for (int k = 0; k < n_locs; k++)
    at = MIN(at, locs[k].off / 512 * 512);
  memset(h + 576, 0, 8 * 24);
  for (int k = 0; k < n_locs; k++) {
    T_ASSERT(space[k] >= locs[k].len && space[k] % 512 == 0, "locator %d: room %u for %u bytes",
             k, space[k], locs[k].len);
    CLEANUP_FREE uint8_t *room = t_xcalloc(1, space[k]);
    memcpy(room, locs[k].data, locs[k].len);
    t_pwrite_file(path, room, space[k], at);
    uint8_t *e = h + 576 + 24 * k;
    store32(e, locs[k].code);
    store32(e + 4, space[k]);
    store32(e + 8, locs[k].len);
    store32(e + 16, (uint32_t)(at >> 32));
    store32(e + 20, (uint32_t)at);
    locs[k].off = at;
    at += space[k];
  }
  t_pwrite_file(path, foot, sizeof foot, at);
  t_truncate_file(path, at + 512);
  header_write(path, h);
}

/* Where a compaction of path would put the locator data (the end of the
 * blocks once moved), by its dry run: the file then ends with the data
 * and the footer. */
static uint64_t locators_destination(const char *path) {
  struct vhd_err err = {{0}};
  struct vhd_compact_result dry;
  struct vhd_compact_opts dopts = {.dry_run = true};
  T_OK(vhd_compact(path, &dopts, &dry, &err), &err, "vhd_compact --dry-run");
  T_ASSERT(dry.locators_moved == (uint32_t)n_locs, "%u of %d locators would move",
           dry.locators_moved, n_locs);
  uint64_t s = UINT64_MAX, e = 0;
  for (int k = 0; k < n_locs; k++) {
    s = MIN(s, locs[k].off / 512 * 512);
    e = MAX(e, (locs[k].off + locs[k].len + 511) / 512 * 512);
  }
  return dry.file_size_after - 512 - (e - s);
}

/* Rooms that fill the whole space the blocks give up, so that the copy
 * would end where the live data starts: no sector is left for the footer
 * written after it, and the data must stay. */
static void build_locators_no_room(const char *path) {
  build_locators_past(path);
  uint64_t dst = locators_destination(path), s = MIN(locs[0].off, locs[1].off) / 512 * 512;
  uint32_t space[2];
  space[0] = (locs[0].len + 511) / 512 * 512;
  space[1] = (uint32_t)(s - dst) - space[0];
  relay_locators(path, space);
  locs_stay = true;
}

/* A third locator (another platform's, which open passes over) longer
 * than a copy a crash could leave and a rerun recognise: none of the data
 * moves, though 22 freed blocks would make room for it all. */
static void build_locator_too_long(const char *path) {
  build_locators_past_n(path, 20);
  locs[2].code = 0x4D616320u; /* "Mac " */
  locs[2].len = 65536 + 512;
  locs[2].off = UINT64_MAX;
  t_fill_nonzero(locs[2].data, locs[2].len);
  n_locs = 3;
  uint32_t space[3] = {(locs[0].len + 511) / 512 * 512, (locs[1].len + 511) / 512 * 512,
                       locs[2].len};
  relay_locators(path, space);
  locs_stay = true;
}

/* A dynamic image whose header lists a parent locator past its blocks:
 * the format gives a dynamic disk none, so it is nobody's to move. */
static void build_dynamic_locator(const char *path) {
  build_dynamic(path);
  static const char name[] = "C:\\parent.vhd";
  locs[0].code = 0x57326B75u; /* "W2ku" */
  locs[0].len = sizeof name - 1;
  locs[0].off = UINT64_MAX;
  memcpy(locs[0].data, name, locs[0].len);
  n_locs = 1;
  uint32_t space[1] = {512};
  relay_locators(path, space);
  locs_stay = true;
}

static void verify(const char *path, const char *when) {
  int c = t_check(path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s: vhd_check finds corruption (0x%x)", when, c);
  vhd_t *v = t_open(path, true);
  static uint8_t buf[SIZE];
  struct vhd_err err = {{0}};
  T_ASSERT(vhd_virtual_size(v) == SIZE, "%s: size %llu", when,
           (unsigned long long)vhd_virtual_size(v));
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read");
  vhd_close(v, NULL);
  for (uint64_t i = 0; i < SIZE; i++)
    T_ASSERT(buf[i] == model[i], "%s: byte at %llu reads 0x%02x, expected 0x%02x", when,
             (unsigned long long)i, buf[i], model[i]);
  if (n_locs) {
    /* The header's locators always point at their whole data, where it
     * was when it may not move. */
    __typeof__(locs) now;
    T_ASSERT(read_locators(path, now) == n_locs, "%s: the number of parent locators changed",
             when);
    for (int i = 0; i < n_locs; i++)
      T_ASSERT(now[i].code == locs[i].code && now[i].len == locs[i].len &&
                   memcmp(now[i].data, locs[i].data, locs[i].len) == 0,
               "%s: parent locator %d (code 0x%08x) no longer points at its data", when, i,
               locs[i].code);
    for (int i = 0; locs_stay && i < n_locs; i++)
      T_ASSERT(now[i].off == locs[i].off, "%s: parent locator %d moved from %llu to %llu", when,
               i, (unsigned long long)locs[i].off, (unsigned long long)now[i].off);
  }
  if (foreign_off) {
    uint8_t now[SPAN];
    T_ASSERT(t_file_size(path) >= foreign_off + SPAN + 512, "%s: the file ends before the foreign bytes",
             when);
    t_pread_file(path, now, SPAN, foreign_off);
    T_ASSERT(memcmp(now, foreign, SPAN) == 0, "%s: bytes nobody referred to at %llu changed",
             when, (unsigned long long)foreign_off);
  }
}

static void run(const char *name, void (*build)(const char *), uint32_t want_freed,
                uint32_t want_moved, uint32_t want_locators) {
  CLEANUP_FREE char *start = strdup(t_path("start.vhd")), *work = strdup(t_path("work.vhd"));
  remove(start);
  build(start);
  verify(start, t_fmt("%s: before compacting", name));
  struct vhd_err err = {{0}};
  struct vhd_compact_result dry, res;
  struct vhd_compact_opts dopts = {.dry_run = true}, opts = {0};
  uint64_t hash = t_file_hash(start);
  T_OK(vhd_compact(start, &dopts, &dry, &err), &err, "vhd_compact --dry-run");
  T_ASSERT(t_file_hash(start) == hash, "%s: --dry-run changed the file", name);
  T_ASSERT(dry.blocks_freed == want_freed && dry.blocks_moved == want_moved &&
               dry.locators_moved == want_locators,
           "%s: dry run: %u freed, %u moved, %u locators moved; expected %u, %u and %u", name,
           dry.blocks_freed, dry.blocks_moved, dry.locators_moved, want_freed, want_moved,
           want_locators);
  T_ASSERT(dry.file_size_before == t_file_size(start), "%s: size before", name);
  unsigned crashes = 0;
  for (long n = 0;; n++) {
    /* lose: 0 keeps what reached the page cache, 1 loses the writes since
     * the last sync, 2 and 3 tear them at sectors (t_tear_unsynced). */
    for (int lose = 0; lose < 4; lose++) {
      t_copy_file(start, work);
      t_track_unsynced(true);
      vhd_fault_arm(n);
      int r = vhd_compact(work, &opts, &res, &err);
      bool tripped = vhd_fault_tripped();
      vhd_fault_arm(-1);
      if (!tripped) {
        t_track_unsynced(false);
        T_OK(r, &err, "vhd_compact");
        T_ASSERT(res.blocks_freed == dry.blocks_freed && res.blocks_moved == dry.blocks_moved &&
                     res.locators_moved == dry.locators_moved &&
                     res.file_size_after == dry.file_size_after,
                 "%s: the dry run predicted %u/%u/%llu, the compaction did %u/%u/%llu", name,
                 dry.blocks_freed, dry.blocks_moved, (unsigned long long)dry.file_size_after,
                 res.blocks_freed, res.blocks_moved, (unsigned long long)res.file_size_after);
        T_ASSERT(t_file_size(work) == res.file_size_after, "%s: file is %llu bytes, reported %llu",
                 name, (unsigned long long)t_file_size(work),
                 (unsigned long long)res.file_size_after);
        /* Locator data that stays at the end keeps the file's length. */
        T_ASSERT(locs_stay || res.file_size_after < res.file_size_before, "%s: nothing reclaimed",
                 name);
        verify(work, t_fmt("%s: after compacting", name));
        if (want_locators) {
          /* Moved to right after the blocks, and the file ends after it. */
          __typeof__(locs) now;
          uint64_t first = UINT64_MAX;
          for (int i = 0, k = read_locators(work, now); i < k; i++)
            first = MIN(first, now[i].off);
          T_ASSERT(first == blocks_end(work),
                   "%s: the locator data starts at %llu, not where the blocks end (%llu)", name,
                   (unsigned long long)first, (unsigned long long)blocks_end(work));
        }
        /* Compacting again finds nothing more. */
        T_OK(vhd_compact(work, &opts, &res, &err), &err, "vhd_compact again");
        T_ASSERT(res.blocks_freed == 0 && res.blocks_moved == 0 && res.locators_moved == 0 &&
                     res.file_size_after == res.file_size_before,
                 "%s: a second compaction still did %u/%u", name, res.blocks_freed,
                 res.blocks_moved);
        printf("%s: %ld I/O points, %u crash images checked, %llu -> %llu bytes\n", name, n,
               crashes, (unsigned long long)dry.file_size_before,
               (unsigned long long)dry.file_size_after);
        return;
      }
      T_ASSERT(r < 0, "%s: vhd_compact returned %d after the fault at %ld", name, r, n);
      if (lose == 1)
        t_lose_unsynced(work);
      else if (lose > 1)
        t_tear_unsynced(work, lose - 2);
      t_track_unsynced(false);
      static const char *const how[] = {"", " (unsynced lost)", " (unsynced torn, even sectors kept)",
                                        " (unsynced torn, odd sectors kept)"};
      const char *when = t_fmt("%s: after a crash at I/O %ld%s", name, n, how[lose]);
      verify(work, when);
      crashes++;
      T_OK(vhd_compact(work, &opts, &res, &err), &err, "vhd_compact after a crash");
      verify(work, t_fmt("%s: compacted again %s", name, when));
      T_ASSERT(t_file_size(work) <= dry.file_size_before, "%s: the file grew", when);
      /* What a compaction cut short leaves, a rerun takes: nothing stays.
       * Not so for a torn block copy (zero sectors among the block's
       * bytes), which could be anyone's: it stays where it was written. */
      T_ASSERT(lose > 1 || t_file_size(work) == dry.file_size_after,
               "%s: compacted again, the file is %llu bytes; one never cut short leaves %llu", when,
               (unsigned long long)t_file_size(work), (unsigned long long)dry.file_size_after);
    }
  }
}

/* A locator whose reserved room reaches past the footer (its data inside
 * the file): the room is not in the file to copy, so the data stays, and
 * the compaction does the rest. */
static void locator_room_past_footer(void) {
  CLEANUP_FREE char *path = strdup(t_path("room.vhd"));
  remove(path);
  build_locators_past(path);
  uint8_t h[1024];
  t_pread_file(path, h, sizeof h, 512);
  int last = -1;
  for (int i = 0; i < 8; i++)
    if (t_be32(h + 576 + 24 * i) &&
        (last < 0 || t_be64(h + 576 + 24 * i + 16) > t_be64(h + 576 + 24 * last + 16)))
      last = i;
  T_ASSERT(last >= 0, "no parent locator");
  uint8_t *space = h + 576 + 24 * last + 4;
  /* 1536 bytes: past the footer, which follows its 512, by 1024, and
   * short enough for the span to fit in the freed blocks below. */
  space[0] = 0, space[1] = 0, space[2] = 0x06, space[3] = 0;
  header_write(path, h);
  verify(path, "room past the footer: before compacting");
  struct vhd_err err = {{0}};
  struct vhd_compact_result dry, res;
  struct vhd_compact_opts dopts = {.dry_run = true}, opts = {0};
  T_OK(vhd_compact(path, &dopts, &dry, &err), &err, "vhd_compact --dry-run, room past the footer");
  T_OK(vhd_compact(path, &opts, &res, &err), &err, "vhd_compact, room past the footer");
  T_ASSERT(res.locators_moved == 0 && dry.locators_moved == 0 && res.blocks_freed == 2 &&
               res.file_size_after == dry.file_size_after,
           "room past the footer: %u locators moved, %u blocks freed, %llu bytes (dry run %llu)",
           res.locators_moved, res.blocks_freed, (unsigned long long)res.file_size_after,
           (unsigned long long)dry.file_size_after);
  verify(path, "room past the footer: after compacting");
}

static void refusals(void) {
  CLEANUP_FREE char *fixed = strdup(t_path("fixed.vhd")), *dyn = strdup(t_path("inuse.vhd"));
  struct vhd_err err = {{0}};
  struct vhd_compact_result res;
  struct vhd_compact_opts opts = {0};
  t_create(fixed, VHD_TYPE_FIXED, SIZE, 0, true, NULL);
  T_ASSERT(vhd_compact(fixed, &opts, &res, &err) == -EINVAL, "a fixed image: %s", err.msg);
  t_create(dyn, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(dyn, false);
  uint64_t hash = t_file_hash(dyn);
  int r = vhd_compact(dyn, &opts, &res, &err);
  T_ASSERT(r == -EBUSY && strstr(err.msg, "locked"), "an image in use: %d %s", r, err.msg);
  T_ASSERT(t_file_hash(dyn) == hash, "a refused compaction changed the image");
  vhd_close(v, NULL);
}

int main(void) {
  t_init("test-vhd-compact");
  CLEANUP_FREE char *pp = strdup(t_path("parent.vhd"));
  parent_path = pp;
  refusals();
  /* dynamic: blocks 1, 5 and 12 freed; 13, 11, 10 move down into 1, 4's gap
   * and 5 (the foreign bytes of 3 stay); 9 has no free slot below it. */
  run("dynamic", build_dynamic, 3, 3, 0);
  run("adjacent", build_adjacent, 2, 3, 0);
  run("adjacent-packed", build_adjacent_packed, 2, 3, 0);
  /* differencing: blocks 5 and 7 freed; 8 moves into 5's place. */
  run("differencing", build_differencing, 2, 1, 0);
  /* The same with the locator data past block 8: it follows the blocks. */
  run("locators-past-blocks", build_locators_past, 2, 1, 2);
  locator_room_past_footer();
  /* Locator data that may not move: blocks are freed and moved around it. */
  run("locators-no-room", build_locators_no_room, 2, 1, 0);
  run("locator-too-long", build_locator_too_long, 22, 1, 0);
  locs_stay = false;
  n_locs = 0;
  run("dynamic-locator", build_dynamic_locator, 3, 3, 0);
  n_locs = 0;
  locs_stay = false;
  return 0;
}
