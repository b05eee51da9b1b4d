/* relink.c: pointing a differencing disk at a parent (vhd_rebase, and
 * vhd_commit's new parent timestamp): the parent's identity in the header
 * and its locators, written as Windows writes them.
 *
 * Where the new locator data goes: into blank room too small for a block
 * (the padding before an aligned block, the area an earlier relink gave
 * up), where nothing refers to it and it can stay for good; only where
 * there is none, past every block, with the footer moved after it.  Data
 * past the last block keeps the file from ending after the blocks until
 * a compaction moves it down after them (compact.c, step 4).
 *
 * Write order, so that a crash at any instant leaves a child that opens and
 * finds a parent:
 *  1. past the blocks only: the footer is written again past the end of
 *     the file, after room for the new locator data, and synced: the file
 *     now ends with a valid footer, and the old trailing footer is only a
 *     stale copy;
 *  2. the new locator data goes into its room (bytes nothing refers to:
 *     neither a block, nor a structure, nor an area the old header points
 *     to), and is synced;
 *  3. the header is rewritten (vhd_header_rewrite): the new header is
 *     journaled past the end of the file and synced, then written at its
 *     own offset and synced, then the journal is cut off again;
 *  4. the old locator data, which nothing refers to now, is zeroed, so
 *     that a later relink can take its room, and a tail that held it is
 *     given back.
 * Until step 3 reaches the disk the old header, and the old locator data it
 * points to, are untouched.  A device that tears the header's two sectors
 * apart leaves a header whose checksum fails, and one of whose sectors is
 * the journal's: open reads the new header from the journal (and an open
 * for writing writes it back), so the child is read through the new parent
 * or the old one, never a mix.  A crash before step 4 leaves the old locator
 * data in place, unused (a few KiB; `vhdimg check` does not count gaps
 * this small as leaks). */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

int vhd_relative_path(const char *from_dir, const char *to, char *out, size_t len) {
  size_t common = 0;
  for (size_t i = 0;; i++) {
    char a = from_dir[i], b = to[i];
    if ((a == '/' || a == '\0') && b == '/')
      common = i;
    if (a != b || a == '\0')
      break;
  }
  size_t pos = 0;
  if (len == 0)
    return -ENAMETOOLONG;
  out[0] = '\0';
  if (strcmp(from_dir, "/") != 0)
    for (const char *p = from_dir + common; *p; p++) {
      if (*p != '/')
        continue;
      if (pos + 4 > len)
        return -ENAMETOOLONG;
      memcpy(out + pos, "../", 4);
      pos += 3;
    }
  int n = snprintf(out + pos, len - pos, "%s", to + common + 1);
  return n < 0 || (size_t)n >= len - pos ? -ENAMETOOLONG : 0;
}

int vhd_parent_ref_make(const char *child_path, const char *parent_path,
                        struct vhd_parent_ref *ref, struct vhd_err *err) {
  char parent_abs[PATH_MAX], child_dir[PATH_MAX], rel[PATH_MAX];
  memset(ref, 0, sizeof *ref);
  if (!realpath(parent_path, parent_abs))
    return vhd_set_err(err, -errno, "%s: %s", parent_path, strerror(errno));
  {
    /* From the directory of the file the child is (a symbolic link to it
     * resolved), where readers look first (chain.c); a child not made yet
     * has its directory resolved. */
    char real_child[PATH_MAX];
    bool exists = realpath(child_path, real_child) != NULL;
    CLEANUP_FREE char *copy = strdup(exists ? real_child : child_path);
    if (!copy)
      return vhd_set_err(err, -ENOMEM, "%s: out of memory", child_path);
    if (!realpath(dirname(copy), child_dir))
      return vhd_set_err(err, -errno, "%s: cannot resolve its directory: %s", child_path,
                         strerror(errno));
  }
  if (vhd_relative_path(child_dir, parent_abs, rel, sizeof rel) < 0)
    return vhd_set_err(err, -ENAMETOOLONG,
                       "the parent %s is too far up from the child's directory: the relative "
                       "path to it is longer than %zu bytes, too long for a parent locator "
                       "(child %s)",
                       parent_abs, sizeof rel - 1, child_path);
  char win_rel[PATH_MAX + 3];
  snprintf(win_rel, sizeof win_rel, "%s%s", strncmp(rel, "../", 3) ? ".\\" : "", rel);
  for (char *p = win_rel; *p; p++)
    if (*p == '/')
      *p = '\\';
  const char *base = strrchr(parent_abs, '/') + 1;
  if (!vhd_utf8_valid(win_rel) || !vhd_utf8_valid(base))
    return vhd_set_err(err, -EINVAL,
                       "%s: the parent's name or its path from the child (%s) is not UTF-8, "
                       "which the parent locators hold: no reader could find the parent "
                       "(rename it)",
                       child_path, rel);
  ref->rel_len = vhd_utf8_to_utf16(win_rel, false, ref->rel, sizeof ref->rel);
  ref->abs_len = vhd_utf8_to_utf16(parent_abs, false, ref->abs, sizeof ref->abs);
  vhd_utf8_to_utf16(base, true, ref->name_raw, sizeof ref->name_raw - 2);
  snprintf(ref->name, sizeof ref->name, "%s", base);
  return 0;
}

static void put_locator(uint8_t *l, uint32_t code, uint32_t space, uint32_t len, uint64_t off) {
  memset(l, 0, 24);
  be32_store(l, code);
  be32_store(l + 4, space);
  be32_store(l + 8, len);
  be64_store(l + 16, off);
}

struct relink_fields {
  const uint8_t *uuid;
  uint32_t timestamp;
  const struct vhd_parent_ref *ref;
  uint32_t rel_space, abs_space;
  uint64_t base; /* where the W2ru data starts, the W2ku data right after */
};

/* Only the parent's fields change: reserved bytes stay as they were. */
static void put_parent_fields(uint8_t *raw, void *arg) {
  const struct relink_fields *f = arg;
  memcpy(raw + 40, f->uuid, 16);
  be32_store(raw + 56, f->timestamp);
  memcpy(raw + 64, f->ref->name_raw, 512);
  for (int i = 0; i < 8; i++)
    put_locator(raw + VHD_LOCATOR_ENTRY(i), 0, 0, 0, 0);
  put_locator(raw + VHD_LOCATOR_ENTRY(0), VHD_PLAT_W2RU, f->rel_space, (uint32_t)f->ref->rel_len,
              f->base);
  put_locator(raw + VHD_LOCATOR_ENTRY(1), VHD_PLAT_W2KU, f->abs_space, (uint32_t)f->ref->abs_len,
              f->base + f->rel_space);
}

/* Everything of the file that is someone's, below the footer or not:
 * structures, the room the header's locators reserve, blocks in use or
 * freed but not yet given back (vhd_used_extents). */
static ssize_t used_ranges(vhd_t *c, struct vhd_used **out) {
  pthread_mutex_lock(&c->lock);
  ssize_t n = vhd_used_extents(c, VHD_USED_LOCATOR_ROOM | VHD_USED_FREED, out);
  pthread_mutex_unlock(&c->lock);
  return n;
}

/* The first sector-aligned room of `need` bytes in the data area, below
 * the footer, that nothing refers to and in which nothing can be read
 * (vhd_range_holds_nothing: zeros, this image's old footers, copies of its
 * locator data): 1 with *at, 0 where there is none, or -errno.  Each gap
 * is tried at its start and at its end (blocks placed on a 4 KiB boundary
 * leave zeros before them; slack another writer left after a structure
 * may not be). */
static int locator_room(vhd_t *c, uint64_t need, uint64_t *at) {
  CLEANUP_FREE struct vhd_used *u = NULL;
  ssize_t n = used_ranges(c, &u);
  if (n < 0)
    return (int)n;
  uint64_t data_start = vhd_structures_end(c);
  uint64_t span = (uint64_t)c->bitmap_size + c->block_size;
  /* Below where the engine hands out new blocks: a window the release
   * could not give back (a full file system) is theirs. */
  uint64_t limit = MIN(c->footer_offset, c->next_block_offset), from = data_start;
  for (ssize_t i = 0; i <= n && from < limit; i++) {
    uint64_t to = i < n ? MIN(u[i].start, limit) : limit;
    uint64_t first = ROUND_UP(from, 512);
    /* Only gaps too small for a block: compaction fills larger ones with
     * blocks from the end of the file, and locator data in them would
     * keep it from doing so, or pin the end of the file if it lay high. */
    if (to > first && to - first >= need && to - from < span) {
      uint64_t tries[2] = {first, ROUND_DOWN(to - need, 512)};
      for (int t = 0; t < 2; t++) {
        if (t == 1 && tries[1] == tries[0])
          break;
        int r = vhd_range_holds_nothing(c, tries[t], tries[t] + need);
        if (r < 0)
          return r;
        if (r == 1) {
          *at = tries[t];
          return 1;
        }
      }
    }
    if (i < n)
      from = MAX(from, u[i].end);
  }
  return 0;
}

/* Where the file may end once the old locator data is gone: past the
 * structures, the new locator areas and every block in use or freed;
 * what lies between there and the footer must hold nothing. */
static uint64_t end_without_old_locators(vhd_t *c) {
  CLEANUP_FREE struct vhd_used *u = NULL;
  ssize_t n = used_ranges(c, &u);
  if (n < 0)
    return c->footer_offset;
  uint64_t end = vhd_structures_end(c);
  for (ssize_t i = 0; i < n; i++)
    if (u[i].start < c->footer_offset)
      end = MAX(end, ROUND_UP(u[i].end, 512));
  return end;
}

int vhd_header_relink(vhd_t *c, const vhd_t *p, uint32_t parent_timestamp,
                      struct vhd_err *err) {
  CLEANUP_FREE uint8_t *area = NULL;
  struct vhd_parent_ref *ref = malloc(sizeof *ref);
  if (!ref)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory", c->path);
  int r = vhd_parent_ref_make(c->path, p->path, ref, err);
  if (r < 0)
    goto out;
  /* Past every block (the window given back) and every area the old
   * header points to (cut_floor covers them). */
  if ((r = vhd_flush(c, err)) < 0 || (r = vhd_window_release(c, err)) < 0)
    goto out;
  uint32_t rel_space = (uint32_t)ROUND_UP(ref->rel_len, 512);
  uint32_t abs_space = (uint32_t)ROUND_UP(ref->abs_len, 512);
  uint64_t base = 0;
  r = locator_room(c, (uint64_t)rel_space + abs_space, &base);
  if (r < 0) {
    r = vhd_set_err(err, r, "%s: looking for room for the parent locators: %s", c->path,
                    strerror(-r));
    goto out;
  }
  bool in_room = r == 1;
  if (!in_room)
    base = MAX(c->footer_offset, ROUND_UP(c->cut_floor, 512));
  uint64_t new_footer = in_room ? c->footer_offset : base + rel_space + abs_space;
  struct vhd_locator old_locators[8];
  memcpy(old_locators, c->header.locators, sizeof old_locators);

  struct relink_fields fields = {p->footer.uuid, parent_timestamp, ref, rel_space, abs_space, base};

  area = calloc(1, (size_t)rel_space + abs_space);
  if (!area) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", c->path);
    goto out;
  }
  memcpy(area, ref->rel, ref->rel_len);
  memcpy(area + rel_space, ref->abs, ref->abs_len);

  const char *step = "moving the footer";
  uint64_t at = new_footer;
  if (!in_room && ((r = vhd_io_pwrite(c, c->footer_raw, VHD_FOOTER_SIZE, new_footer)) < 0 ||
                   (r = vhd_io_sync(c)) < 0))
    goto io_failed;
  step = "writing the parent locators";
  at = base;
  if ((r = vhd_io_pwrite(c, area, (size_t)rel_space + abs_space, base)) < 0 ||
      (r = vhd_io_sync(c)) < 0)
    goto io_failed;
  if ((r = vhd_header_rewrite(c, put_parent_fields, &fields, err)) < 0)
    goto out;

  snprintf(c->parent_name, sizeof c->parent_name, "%s", ref->name);
  pthread_mutex_lock(&c->lock);
  c->footer_offset = new_footer;
  c->next_block_offset = MAX(c->next_block_offset, new_footer);
  c->alloc_floor = MAX(c->alloc_floor, new_footer);
  /* The file may not end before the new locator data. */
  c->cut_floor = in_room ? MAX(c->cut_floor, base + rel_space + abs_space) : new_footer;
  pthread_mutex_unlock(&c->lock);

  /* The old locator data is nobody's now.  Zeroed, its room is blank for
   * the next relink; a tail that held it goes back.  Both are tidying:
   * the relink is done, and a failure only leaves the old data unused. */
  r = 0;
  for (int i = 0; r == 0 && i < 8; i++) {
    const struct vhd_locator *l = &old_locators[i];
    if (l->code == VHD_PLAT_NONE || l->data_length == 0 || l->data_offset >= c->footer_offset)
      continue;
    at = l->data_offset;
    r = vhd_io_zero(c, l->data_offset, l->data_length);
  }
  const char *what = "zeroing the old parent locator data at offset";
  if (r == 0 && (r = vhd_io_sync(c)) < 0)
    what = "syncing the zeroed old parent locator data, last at offset";
  uint64_t end = end_without_old_locators(c);
  if (r == 0 && end < c->cut_floor && end < c->footer_offset &&
      vhd_range_holds_nothing(c, end, c->footer_offset) == 1) {
    pthread_mutex_lock(&c->lock);
    c->cut_floor = end;
    pthread_mutex_unlock(&c->lock);
    struct vhd_err cut_err = {{0}};
    if (vhd_window_release(c, &cut_err) < 0)
      vhd_warn(c, "%s (the parent is relinked; the old locator data stays unused)", cut_err.msg);
  }
  if (r < 0)
    vhd_warn(c, "%s: %s %llu: %s (the parent is relinked; the old data stays unused)",
             c->path, what, (unsigned long long)at, strerror(-r));
  r = 0;
  goto out;
io_failed:
  r = vhd_set_err(err, r, "%s: %s at offset %llu: %s", c->path, step, (unsigned long long)at,
                  strerror(-r));
out:
  free(ref);
  return r;
}

int vhd_footer_set_timestamp(vhd_t *vhd, uint32_t ts, struct vhd_err *err) {
  /* The trailing footer first: a copy at 0 newer than it would be the one a
   * reader distrusts.  Either footer alone is valid, so a crash between the
   * two costs at most a "footers differ" warning. */
  pthread_mutex_lock(&vhd->lock);
  be32_store(vhd->footer_raw + 24, ts);
  be32_store(vhd->footer_raw + 64, vhd_checksum(vhd->footer_raw, VHD_FOOTER_SIZE, 64));
  vhd->footer.timestamp = ts;
  uint8_t raw[VHD_FOOTER_SIZE];
  memcpy(raw, vhd->footer_raw, sizeof raw);
  uint64_t at = vhd->footer_offset;
  pthread_mutex_unlock(&vhd->lock);
  int r;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = vhd_io_fixed_footer_write(vhd, raw, &at);
  } else {
    r = vhd_io_pwrite(vhd, raw, sizeof raw, at);
    if (r == 0)
      r = vhd_io_sync(vhd);
  }
  if (r == 0 && vhd->type != VHD_TYPE_FIXED) {
    at = 0;
    r = vhd_io_pwrite(vhd, raw, sizeof raw, 0);
    if (r == 0)
      r = vhd_io_sync(vhd);
  }
  if (r < 0)
    return vhd_set_err(err, r, "%s: writing the footer's new timestamp at offset %llu: %s",
                       vhd->path, (unsigned long long)at, strerror(-r));
  return 0;
}

