/* snapshot.c: a block's BAT entry and bitmap bits, copied under the lock
 * for reads and maps that then run without it. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "rw.h"

int vhd_block_snapshot_take(vhd_t *vhd, uint32_t blk, uint32_t s0, uint32_t s1,
                            uint32_t span_blocks, bool nowait, bool pin,
                            struct block_snapshot *snap, struct vhd_err *err) {
  size_t need = (s1 + 7) / 8 - s0 / 8;
  snap->heap = NULL;
  snap->pinned = false;
  snap->bits = snap->stack;
  snap->unused_blocks = 0;
  snap->uniform = SNAP_MIXED;
  if (need > sizeof snap->stack) {
    snap->heap = malloc(need);
    if (!snap->heap)
      return vhd_set_err(err, -ENOMEM, "%s: out of memory for the bitmap of block %u",
                         vhd->path, blk);
    snap->bits = snap->heap;
  }
  int r = 0;
  if (nowait) {
    if (pthread_mutex_trylock(&vhd->lock) != 0)
      r = -EAGAIN;
  } else {
    pthread_mutex_lock(&vhd->lock);
  }
  if (r == 0) {
    uint8_t *full = NULL;
    /* A bitmap read from the file drops the lock: look again after it. */
    while (!nowait && vhd->bat[blk] != VHD_BAT_UNUSED &&
           (r = vhd_bitmap_load(vhd, blk, &full, err)) == 1)
      r = 0;
    snap->entry = vhd->bat[blk];
    if (r < 0) {
      /* reported below */
    } else if (snap->entry == VHD_BAT_UNUSED) {
      uint32_t n = 1;
      while (n < span_blocks && vhd->bat[blk + n] == VHD_BAT_UNUSED)
        n++;
      snap->unused_blocks = n;
    } else {
      if (nowait && !(full = vhd->bitmaps[blk]))
        r = -EAGAIN;
      if (r == 0) {
        bool v;
        if (vhd_bitmap_run(full, s0, s1, &v) == s1 - s0)
          snap->uniform = v ? SNAP_ALL_SET : SNAP_NONE_SET;
        else
          memcpy(snap->bits, full + s0 / 8, need);
      }
      if (r == 0 && pin && snap->uniform != SNAP_NONE_SET) {
        vhd_block_pin(vhd, blk);
        snap->pinned = true;
      }
    }
    pthread_mutex_unlock(&vhd->lock);
  }
  if (r < 0) {
    free(snap->heap);
    snap->heap = NULL;
  }
  return r;
}
