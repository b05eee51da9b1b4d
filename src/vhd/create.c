/* create.c: new fixed, dynamic and differencing images. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "cleanup.h"
#include "vhd-internal.h"

static uint32_t vhd_now(void) {
  time_t t = time(NULL);
  return t > VHD_TIMESTAMP_EPOCH ? (uint32_t)(t - VHD_TIMESTAMP_EPOCH) : 0;
}

static int write_all(int fd, const char *path, const void *buf, size_t len, uint64_t off,
                     struct vhd_err *err) {
  int r = vhd_io_pwrite_fd(fd, buf, len, off);
  if (r < 0)
    return vhd_set_err(err, r, "%s: writing at offset %llu: %s", path, (unsigned long long)off,
                       strerror(-r));
  return 0;
}

uint64_t vhd_size_geometry(uint64_t size, bool exact, struct vhd_footer *f) {
  size = ROUND_UP(size, 512);
  if (exact) {
    vhd_geometry_for_size(size, &f->cylinders, &f->heads, &f->spt);
    /* "qem2" is the creator QEMU and others read as "the current size is
     * the disk size", whatever the geometry says. */
    memcpy(f->creator_app, "qem2", 4);
  } else {
    /* Smallest CHS geometry at least as large as the request, as QEMU
     * does, so that CHS and current size agree for every reader. */
    uint64_t chs = 0;
    for (uint64_t sectors = size / 512; chs < size; sectors++) {
      chs = vhd_geometry_for_size(sectors * 512, &f->cylinders, &f->heads, &f->spt);
      if (f->cylinders == 65535 && f->heads == 16 && f->spt == 255)
        break;
    }
    if (chs >= size)
      size = chs;
  }
  return MIN(size, VHD_MAX_VIRTUAL_SIZE);
}

/* The smallest block size that keeps a BAT for size within the limit. */
static uint64_t min_block_for(uint64_t size) {
  uint64_t bs = VHD_MIN_BLOCK_SIZE;
  while (DIV_ROUND_UP(size, bs) > VHD_MAX_NEW_TABLE_ENTRIES)
    bs *= 2;
  return bs;
}

int vhd_create(const char *path, const struct vhd_create_opts *o, struct vhd_err *err) {
  struct vhd_footer f = {0};
  struct vhd_header h = {0};
  vhd_t *parent = NULL;
  CLEANUP_FREE uint8_t *bat = NULL;
  uint64_t size = o->size;
  uint32_t bs = o->block_size ? o->block_size : VHD_DEFAULT_BLOCK_SIZE;
  CLEANUP_FREE struct vhd_parent_ref *ref = NULL;
  int r;

  if (o->type != VHD_TYPE_FIXED && o->type != VHD_TYPE_DYNAMIC &&
      o->type != VHD_TYPE_DIFFERENCING)
    return vhd_set_err(err, -EINVAL, "%s: unknown disk type %d", path, (int)o->type);
  if (o->type != VHD_TYPE_FIXED &&
      (bs < VHD_MIN_BLOCK_SIZE || bs > VHD_MAX_BLOCK_SIZE || (bs & (bs - 1))))
    return vhd_set_err(err, -EINVAL, "%s: block size %u is not a power of two between %u and %u",
                       path, bs, VHD_MIN_BLOCK_SIZE, VHD_MAX_BLOCK_SIZE);

  f.features = VHD_FEATURES_RESERVED;
  f.version = VHD_VERSION;
  f.timestamp = vhd_now();
  f.creator_version = 0x00010000;
  f.creator_os = 0x5769326B; /* "Wi2k": what every other writer puts here */
  uuid_generate(f.uuid);

  if (o->type == VHD_TYPE_DIFFERENCING) {
    if (!o->parent)
      return vhd_set_err(err, -EINVAL, "%s: a differencing image needs a parent", path);
    struct vhd_open_opts po = {.flags = VHD_OPEN_RDONLY};
    if ((r = vhd_open(o->parent, &po, &parent, err)) < 0)
      return r;
    /* The locators and the name, before the file exists: a parent they
     * cannot name leaves no file behind. */
    if (!(ref = malloc(sizeof *ref))) {
      r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
      goto out;
    }
    if ((r = vhd_parent_ref_make(path, o->parent, ref, err)) < 0)
      goto out;
    /* Same sizes, geometry and creator as the parent, so that every reader
     * derives the same virtual size for both. */
    f.original_size = parent->footer.current_size;
    f.current_size = parent->footer.current_size;
    f.cylinders = parent->footer.cylinders;
    f.heads = parent->footer.heads;
    f.spt = parent->footer.spt;
    memcpy(f.creator_app, parent->footer.creator_app, 4);
    if (!o->block_size && parent->type != VHD_TYPE_FIXED)
      bs = parent->block_size;
    memcpy(h.parent_uuid, parent->footer.uuid, 16);
    h.parent_timestamp = parent->footer.timestamp;
    size = parent->virtual_size;
  } else {
    if (size == 0)
      return vhd_set_err(err, -EINVAL, "%s: size must be larger than 0", path);
    if (size > VHD_MAX_VIRTUAL_SIZE)
      return vhd_set_err(err, -EINVAL, "%s: size %llu exceeds the VHD limit of %llu bytes", path,
                         (unsigned long long)size, (unsigned long long)VHD_MAX_VIRTUAL_SIZE);
    size = vhd_size_geometry(size, o->exact_size, &f);
    if (!o->exact_size)
      memcpy(f.creator_app, "vhdn", 4);
    f.original_size = size;
    f.current_size = size;
  }
  f.disk_type = o->type;
  if (o->type != VHD_TYPE_FIXED && DIV_ROUND_UP(size, bs) > VHD_MAX_NEW_TABLE_ENTRIES) {
    r = vhd_set_err(err, -EFBIG,
                    "%s: %llu bytes in blocks of %u bytes need a BAT of %llu entries, more than "
                    "the %u QEMU opens (and each takes memory while the image is open): use "
                    "blocks of at least %llu bytes",
                    path, (unsigned long long)size, bs,
                    (unsigned long long)DIV_ROUND_UP(size, bs), (unsigned)VHD_MAX_NEW_TABLE_ENTRIES,
                    (unsigned long long)min_block_for(size));
    goto out;
  }

  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, o->mode ? (mode_t)o->mode : 0644);
  if (fd < 0) {
    r = vhd_set_err(err, -errno, "%s: %s", path, strerror(errno));
    goto out;
  }
  uint8_t footer[VHD_FOOTER_SIZE];
  if (o->type == VHD_TYPE_FIXED) {
    f.data_offset = UINT64_MAX;
    vhd_footer_encode(&f, footer);
    if ((r = vhd_io_truncate_fd(fd, size)) < 0)
      r = vhd_set_err(err, r, "%s: setting the size to %llu: %s", path,
                      (unsigned long long)size, strerror(-r));
    else
      r = write_all(fd, path, footer, sizeof footer, size, err);
    goto done;
  }

  uint32_t entries = (uint32_t)DIV_ROUND_UP(size, bs);
  uint64_t bat_span = ROUND_UP((uint64_t)entries * 4, 512);
  f.data_offset = VHD_FOOTER_SIZE;
  h.data_offset = UINT64_MAX;
  h.table_offset = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
  h.version = VHD_VERSION;
  h.max_table_entries = entries;
  h.block_size = bs;
  uint64_t end = h.table_offset + bat_span;

  size_t rel_len = 0, abs_len = 0;
  if (o->type == VHD_TYPE_DIFFERENCING) {
    rel_len = ref->rel_len;
    abs_len = ref->abs_len;
    memcpy(h.parent_name_raw, ref->name_raw, sizeof h.parent_name_raw);
    /* Locator data sits between the BAT and the first block, 512-aligned,
     * its data space counted in bytes as Windows does. */
    h.locators[0] = (struct vhd_locator){VHD_PLAT_W2RU, (uint32_t)ROUND_UP(rel_len, 512),
                                         (uint32_t)rel_len, end};
    end += ROUND_UP(rel_len, 512);
    h.locators[1] = (struct vhd_locator){VHD_PLAT_W2KU, (uint32_t)ROUND_UP(abs_len, 512),
                                         (uint32_t)abs_len, end};
    end += ROUND_UP(abs_len, 512);
  }

  vhd_footer_encode(&f, footer);
  uint8_t header[VHD_HEADER_SIZE];
  vhd_header_encode(&h, header);
  bat = malloc(bat_span);
  if (!bat) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory", path);
    goto done;
  }
  memset(bat, 0xFF, bat_span);
  if ((r = write_all(fd, path, footer, sizeof footer, 0, err)) < 0 ||
      (r = write_all(fd, path, header, sizeof header, VHD_FOOTER_SIZE, err)) < 0 ||
      (r = write_all(fd, path, bat, bat_span, h.table_offset, err)) < 0)
    goto done;
  if (rel_len && (r = write_all(fd, path, ref->rel, rel_len, h.locators[0].data_offset, err)) < 0)
    goto done;
  if (abs_len && (r = write_all(fd, path, ref->abs, abs_len, h.locators[1].data_offset, err)) < 0)
    goto done;
  r = write_all(fd, path, footer, sizeof footer, end, err);
done:
  if (r == 0 && (r = vhd_io_sync_fd(fd)) < 0)
    r = vhd_set_err(err, r, "%s: fsync: %s", path, strerror(-r));
  close(fd);
  if (r < 0)
    unlink(path);
out:
  if (parent)
    vhd_close(parent, NULL);
  return r;
}
