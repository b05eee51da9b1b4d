/* footer.c: the 512-byte hard disk footer and the size rule. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "endian-be.h"
#include "vhd-internal.h"

/* Ones' complement of the byte sum, with the checksum field counted as zero. */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off) {
  /* Every byte, then the checksum field's own four taken out again: no test
   * per byte, which matters where each test costs a call (fuzzing builds
   * trace every comparison). */
  uint32_t sum = 0;
  for (size_t i = 0; i < len; i++)
    sum += buf[i];
  for (size_t i = csum_off; i < csum_off + 4; i++)
    sum -= buf[i];
  return ~sum;
}

void vhd_footer_decode(const uint8_t *raw, struct vhd_footer *f) {
  memset(f, 0, sizeof *f);
  f->features = be32_load(raw + 8);
  f->version = be32_load(raw + 12);
  f->data_offset = be64_load(raw + 16);
  f->timestamp = be32_load(raw + 24);
  memcpy(f->creator_app, raw + 28, 4);
  f->creator_version = be32_load(raw + 32);
  f->creator_os = be32_load(raw + 36);
  f->original_size = be64_load(raw + 40);
  f->current_size = be64_load(raw + 48);
  f->cylinders = be16_load(raw + 56);
  f->heads = raw[58];
  f->spt = raw[59];
  f->disk_type = be32_load(raw + 60);
  f->checksum = be32_load(raw + 64);
  memcpy(f->uuid, raw + 68, 16);
  f->saved_state = raw[84];
}

void vhd_footer_encode(const struct vhd_footer *f, uint8_t *raw) {
  memset(raw, 0, VHD_FOOTER_SIZE);
  memcpy(raw, VHD_FOOTER_COOKIE, 8);
  be32_store(raw + 8, f->features);
  be32_store(raw + 12, f->version);
  be64_store(raw + 16, f->data_offset);
  be32_store(raw + 24, f->timestamp);
  memcpy(raw + 28, f->creator_app, 4);
  be32_store(raw + 32, f->creator_version);
  be32_store(raw + 36, f->creator_os);
  be64_store(raw + 40, f->original_size);
  be64_store(raw + 48, f->current_size);
  be16_store(raw + 56, f->cylinders);
  raw[58] = f->heads;
  raw[59] = f->spt;
  be32_store(raw + 60, f->disk_type);
  memcpy(raw + 68, f->uuid, 16);
  raw[84] = f->saved_state;
  be32_store(raw + 64, vhd_checksum(raw, VHD_FOOTER_SIZE, 64));
}

int vhd_footer_check(const uint8_t *raw, const char *where, struct vhd_err *err) {
  if (memcmp(raw, VHD_FOOTER_COOKIE, 8) != 0)
    return vhd_set_err(err, -EINVAL, "%s: footer cookie is not \"conectix\"", where);
  uint32_t stored = be32_load(raw + 64);
  uint32_t computed = vhd_checksum(raw, VHD_FOOTER_SIZE, 64);
  if (stored != computed)
    return vhd_set_err(err, -EINVAL, "%s: footer checksum 0x%08x does not match computed 0x%08x",
                       where, stored, computed);
  return 0;
}

/* A footer this image wrote at some time: the current one, or an older
 * one a crash left behind a move (a stale copy in a window given back,
 * or one a later run gave a new timestamp or size).  Such a sector is no
 * one's data, wherever it lies outside the structures. */
bool vhd_footer_of_image(const uint8_t *sec, const uint8_t *footer_raw) {
  if (memcmp(sec, footer_raw, VHD_FOOTER_SIZE) == 0)
    return true;
  return memcmp(sec, VHD_FOOTER_COOKIE, 8) == 0 && memcmp(sec + 60, footer_raw + 60, 4) == 0 &&
         memcmp(sec + 68, footer_raw + 68, 16) == 0 &&
         be32_load(sec + 64) == vhd_checksum(sec, VHD_FOOTER_SIZE, 64);
}

/* Virtual PC and Virtual Server exposed the CHS geometry to the guest; every
 * later writer (Hyper-V, disk2vhd, QEMU with force_size, mkimg, VirtualBox,
 * vhd-util) means the current size.  At the maximum geometry CHS cannot
 * express the size, so the current size wins there too. */
bool vhd_footer_uses_chs(const struct vhd_footer *f) {
  bool vpc = memcmp(f->creator_app, "vpc ", 4) == 0 || memcmp(f->creator_app, "vs  ", 4) == 0;
  bool max_geometry = f->cylinders == 65535 && f->heads == 16 && f->spt == 255;
  return vpc && !max_geometry;
}

uint64_t vhd_footer_auto_size(const struct vhd_footer *f) {
  uint64_t size = f->current_size / 512 * 512;
  uint64_t chs = (uint64_t)f->cylinders * f->heads * f->spt * 512;
  return vhd_footer_uses_chs(f) && chs && chs <= size ? chs : size;
}

uint64_t vhd_geometry_for_size(uint64_t size, uint16_t *cyls, uint8_t *heads, uint8_t *spt) {
  uint64_t sectors = size / 512;
  uint32_t s, h, cth;
  if (sectors > 65535ull * 16 * 255)
    sectors = 65535ull * 16 * 255;
  if (sectors >= 65535ull * 16 * 63) {
    s = 255;
    h = 16;
    cth = (uint32_t)(sectors / s);
  } else {
    s = 17;
    cth = (uint32_t)(sectors / s);
    h = (cth + 1023) / 1024;
    if (h < 4)
      h = 4;
    if (cth >= h * 1024 || h > 16) {
      s = 31;
      h = 16;
      cth = (uint32_t)(sectors / s);
    }
    if (cth >= h * 1024) {
      s = 63;
      h = 16;
      cth = (uint32_t)(sectors / s);
    }
  }
  uint32_t c = cth / h;
  if (c > 65535)
    c = 65535;
  if (cyls)
    *cyls = (uint16_t)c;
  if (heads)
    *heads = (uint8_t)h;
  if (spt)
    *spt = (uint8_t)s;
  return (uint64_t)c * h * s * 512;
}
