/* flush.c: vhd_flush, step 3 of the write order in vhd-internal.h. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "rw.h"

struct meta_write {
  uint64_t off;
  uint32_t len;
  bool is_bat;
  uint32_t idx; /* block, or BAT sector */
  uint8_t *data;
};

int vhd_flush(vhd_t *vhd, struct vhd_err *err) {
  if (vhd->readonly)
    return 0;
  /* A sync now could succeed for data whose write-back already failed: the
   * kernel reports such a failure once.  (vhd_io_sync refuses too; this
   * gives the message.) */
  int r = vhd_check_no_write_error(vhd, "flush", err);
  if (r < 0)
    return r;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = vhd_io_sync(vhd);
    return r < 0 ? vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r)) : 0;
  }
  pthread_mutex_lock(&vhd->flush_lock);
  /* Snapshot under the metadata lock: every bit in it belongs to data whose
   * pwrite already returned, so the first fdatasync makes that data durable
   * before the metadata that points at it is written. */
  pthread_mutex_lock(&vhd->lock);
  /* Retired space no I/O targets any more joins the blocks freed before
   * this snapshot: their BAT entries changed before it too. */
  vhd_retired_collect(vhd);
  size_t n = (size_t)vhd->n_dirty_blocks + vhd->n_dirty_bat_sectors;
  struct meta_write *w = n ? calloc(n, sizeof *w) : NULL;
  size_t k = 0;
  if (n && !w) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory flushing", vhd->path);
  } else {
    for (uint32_t i = 0; i < vhd->n_dirty_blocks; i++) {
      uint32_t blk = vhd->dirty_blocks[i];
      vhd->block_dirty[blk] = 0;
      if (vhd->bat[blk] == VHD_BAT_UNUSED || !vhd->bitmaps[blk])
        continue;
      w[k].off = (uint64_t)vhd->bat[blk] * 512;
      w[k].len = vhd->bitmap_size;
      w[k].idx = blk;
      w[k].data = malloc(vhd->bitmap_size);
      if (w[k].data)
        memcpy(w[k].data, vhd->bitmaps[blk], vhd->bitmap_size);
      k++;
    }
    vhd->n_dirty_blocks = 0;
    for (uint32_t i = 0; i < vhd->n_dirty_bat_sectors; i++) {
      uint32_t sec = vhd->dirty_bat_sectors[i];
      vhd->bat_sector_dirty[sec] = 0;
      uint32_t first = sec * 128;
      w[k].off = vhd->header.table_offset + (uint64_t)sec * 512;
      w[k].is_bat = true;
      w[k].idx = sec;
      uint32_t entries = MIN(128u, vhd->max_entries - first);
      w[k].len = entries * 4;
      w[k].data = malloc(512);
      if (w[k].data)
        for (uint32_t e = 0; e < entries; e++) {
          uint32_t v = vhd->bat[first + e];
          uint8_t *d = w[k].data + 4 * e;
          d[0] = (uint8_t)(v >> 24);
          d[1] = (uint8_t)(v >> 16);
          d[2] = (uint8_t)(v >> 8);
          d[3] = (uint8_t)v;
        }
      k++;
    }
    vhd->n_dirty_bat_sectors = 0;
  }
  /* Blocks freed before this snapshot become reusable once it is durable. */
  uint64_t *freed = vhd->free_pending;
  size_t n_freed = vhd->n_free_pending;
  vhd->free_pending = NULL;
  vhd->n_free_pending = vhd->cap_free_pending = 0;
  pthread_mutex_unlock(&vhd->lock);
  if (r == 0) {
    for (size_t i = 0; i < k; i++)
      if (!w[i].data)
        r = vhd_set_err(err, -ENOMEM, "%s: out of memory flushing", vhd->path);
  }
  if (r == 0 && (r = vhd_io_sync(vhd)) < 0)
    vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r));
  for (size_t i = 0; i < k && r == 0; i++)
    if ((r = vhd_io_pwrite(vhd, w[i].data, w[i].len, w[i].off)) < 0)
      vhd_set_err(err, r, "%s: writing metadata at offset %llu: %s", vhd->path,
                  (unsigned long long)w[i].off, strerror(-r));
  if (r == 0 && k && (r = vhd_io_sync(vhd)) < 0)
    vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r));
  if (r < 0) {
    /* Nothing reached disk for sure: mark everything dirty again.  (A
     * failed write or sync latched the image: it is never written.) */
    pthread_mutex_lock(&vhd->lock);
    for (size_t i = 0; i < k; i++) {
      if (w[i].is_bat) {
        if (!vhd->bat_sector_dirty[w[i].idx]) {
          vhd->bat_sector_dirty[w[i].idx] = 1;
          vhd->dirty_bat_sectors[vhd->n_dirty_bat_sectors++] = w[i].idx;
        }
      } else if (vhd->bat[w[i].idx] != VHD_BAT_UNUSED) {
        vhd_block_mark_dirty(vhd, w[i].idx);
      }
    }
    pthread_mutex_unlock(&vhd->lock);
  }
  /* Freed blocks: reusable if the BAT that drops them is durable, else
   * pending again. */
  pthread_mutex_lock(&vhd->lock);
  for (size_t i = 0; i < n_freed; i++) {
    if (r == 0) {
      if (vhd->n_free_ready == vhd->cap_free_ready) {
        size_t nc = vhd->cap_free_ready ? vhd->cap_free_ready * 2 : 64;
        uint64_t *na = realloc(vhd->free_ready, nc * sizeof *na);
        if (!na)
          break; /* the space stays leaked: harmless */
        vhd->free_ready = na;
        vhd->cap_free_ready = nc;
      }
      vhd->free_ready[vhd->n_free_ready++] = freed[i];
    } else if (vhd_block_free_space(vhd, freed[i]) < 0) {
      break;
    }
  }
  pthread_mutex_unlock(&vhd->lock);
  free(freed);
  for (size_t i = 0; i < k; i++)
    free(w[i].data);
  free(w);
  pthread_mutex_unlock(&vhd->flush_lock);
  return r;
}
