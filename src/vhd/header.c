/* header.c: the dynamic disk header, parent locators and UTF-16 names. */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "endian-be.h"
#include "vhd-internal.h"

void vhd_header_decode(const uint8_t *raw, struct vhd_header *h) {
  memset(h, 0, sizeof *h);
  h->data_offset = be64_load(raw + 8);
  h->table_offset = be64_load(raw + 16);
  h->version = be32_load(raw + 24);
  h->max_table_entries = be32_load(raw + 28);
  h->block_size = be32_load(raw + 32);
  h->checksum = be32_load(raw + 36);
  memcpy(h->parent_uuid, raw + 40, 16);
  h->parent_timestamp = be32_load(raw + 56);
  memcpy(h->parent_name_raw, raw + 64, 512);
  for (int i = 0; i < 8; i++) {
    const uint8_t *l = raw + VHD_LOCATOR_ENTRY(i);
    h->locators[i].code = be32_load(l);
    h->locators[i].data_space = be32_load(l + 4);
    h->locators[i].data_length = be32_load(l + 8);
    h->locators[i].data_offset = be64_load(l + 16);
  }
}

void vhd_header_encode(const struct vhd_header *h, uint8_t *raw) {
  memset(raw, 0, VHD_HEADER_SIZE);
  memcpy(raw, VHD_HEADER_COOKIE, 8);
  be64_store(raw + 8, h->data_offset);
  be64_store(raw + 16, h->table_offset);
  be32_store(raw + 24, h->version);
  be32_store(raw + 28, h->max_table_entries);
  be32_store(raw + 32, h->block_size);
  memcpy(raw + 40, h->parent_uuid, 16);
  be32_store(raw + 56, h->parent_timestamp);
  memcpy(raw + 64, h->parent_name_raw, 512);
  for (int i = 0; i < 8; i++) {
    uint8_t *l = raw + VHD_LOCATOR_ENTRY(i);
    be32_store(l, h->locators[i].code);
    be32_store(l + 4, h->locators[i].data_space);
    be32_store(l + 8, h->locators[i].data_length);
    be64_store(l + 16, h->locators[i].data_offset);
  }
  be32_store(raw + 36, vhd_checksum(raw, VHD_HEADER_SIZE, 36));
}

int vhd_header_check(const uint8_t *raw, const char *path, uint64_t off, struct vhd_err *err) {
  if (memcmp(raw, VHD_HEADER_COOKIE, 8) != 0)
    return vhd_set_err(err, -EINVAL,
                       "%s: dynamic header at offset %llu: cookie is not \"cxsparse\"", path,
                       (unsigned long long)off);
  uint32_t stored = be32_load(raw + 36);
  uint32_t computed = vhd_checksum(raw, VHD_HEADER_SIZE, 36);
  if (stored != computed)
    return vhd_set_err(err, -EINVAL,
                       "%s: dynamic header checksum 0x%08x does not match computed 0x%08x", path,
                       stored, computed);
  uint32_t version = be32_load(raw + 24);
  if (version >> 16 != 1)
    return vhd_set_err(err, -EINVAL, "%s: dynamic header version 0x%08x is not 1.x", path,
                       version);
  return 0;
}

/* A rewrite that changes only the header's first sector is one sector
 * write, which a disk stores whole or not at all.  One that changes both
 * (parent name, locators) could be torn between them, and a header whose
 * checksum fails is refused; so the new header goes first past the end of
 * the file, followed by a copy of the footer (the file still ends with a
 * valid one), and is synced: the journal vhd_header_journal_find reads
 * back when it finds the header torn.  Then the header, synced; then the
 * journal is cut off again.  A crash before the header reaches the disk
 * leaves the old header and at most 1536 unused bytes after the data. */
int vhd_header_rewrite(vhd_t *vhd, void (*patch)(uint8_t *raw, void *arg), void *arg,
                       struct vhd_err *err) {
  uint8_t old[VHD_HEADER_SIZE], raw[VHD_HEADER_SIZE + VHD_FOOTER_SIZE];
  uint64_t at = vhd->header_offset;
  const char *step = "reading the header";
  int r = vhd_io_pread(vhd->fd, old, sizeof old, at);
  if (r < 0)
    goto fail;
  memcpy(raw, old, sizeof old);
  patch(raw, arg);
  be32_store(raw + 36, vhd_checksum(raw, VHD_HEADER_SIZE, 36));
  step = "writing the header";
  /* (Open refuses a header that does not start on a sector.) */
  if (memcmp(old + 512, raw + 512, 512) == 0) {
    if ((r = vhd_io_pwrite(vhd, raw, 512, at)) < 0 || (r = vhd_io_sync(vhd)) < 0)
      goto fail;
  } else {
    struct stat st;
    if (fstat(vhd->fd, &st) < 0) {
      r = -errno;
      goto fail;
    }
    uint64_t end = (uint64_t)st.st_size;
    memcpy(raw + VHD_HEADER_SIZE, vhd->footer_raw, VHD_FOOTER_SIZE);
    step = "writing the header's journal";
    at = end;
    if ((r = vhd_io_pwrite(vhd, raw, sizeof raw, end)) < 0 || (r = vhd_io_sync(vhd)) < 0) {
      /* Nothing refers to it yet: best effort, the file ends as before. */
      vhd_io_truncate_fd(vhd->fd, end);
      goto fail;
    }
    step = "writing the header";
    at = vhd->header_offset;
    if ((r = vhd_io_pwrite(vhd, raw, VHD_HEADER_SIZE, at)) < 0 || (r = vhd_io_sync(vhd)) < 0)
      goto fail;
    step = "cutting the header's journal off";
    at = end;
    if ((r = vhd_io_truncate(vhd, end)) < 0 || (r = vhd_io_sync(vhd)) < 0)
      goto fail;
  }
  vhd_header_decode(raw, &vhd->header);
  return 0;
fail:
  return vhd_set_err(err, r, "%s: %s at offset %llu: %s", vhd->path, step,
                     (unsigned long long)at, strerror(-r));
}

uint64_t vhd_header_journal_find(vhd_t *vhd, uint64_t off, const uint8_t *torn,
                                 uint8_t journal[VHD_HEADER_SIZE]) {
  if (vhd->data_end < off + 2 * VHD_HEADER_SIZE)
    return 0;
  uint64_t at = vhd->data_end - VHD_HEADER_SIZE;
  if (vhd_io_pread(vhd->fd, journal, VHD_HEADER_SIZE, at) < 0 ||
      vhd_header_check(journal, vhd->path, at, NULL) < 0)
    return 0;
  /* Torn at a sector: one of the two is the new one.  Anything else is
   * damage the journal does not explain. */
  if (memcmp(torn, journal, 512) != 0 && memcmp(torn + 512, journal + 512, 512) != 0)
    return 0;
  return at;
}

static size_t put_utf8(uint32_t cp, char *out, size_t pos, size_t out_len) {
  char tmp[4];
  size_t n;
  if (cp < 0x80) {
    tmp[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    tmp[0] = (char)(0xC0 | (cp >> 6));
    tmp[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    tmp[0] = (char)(0xE0 | (cp >> 12));
    tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    tmp[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    tmp[0] = (char)(0xF0 | (cp >> 18));
    tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    tmp[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  if (pos + n + 1 > out_len)
    return 0;
  memcpy(out + pos, tmp, n);
  return n;
}

size_t vhd_utf16_to_utf8(const uint8_t *in, size_t in_len, bool big_endian, char *out,
                         size_t out_len) {
  size_t pos = 0;
  if (out_len == 0)
    return 0;
  for (size_t i = 0; i + 1 < in_len; i += 2) {
    uint32_t u = big_endian ? (uint32_t)(in[i] << 8 | in[i + 1]) : (uint32_t)(in[i + 1] << 8 | in[i]);
    if (u == 0)
      break;
    if (u >= 0xD800 && u < 0xDC00 && i + 3 < in_len) {
      uint32_t lo = big_endian ? (uint32_t)(in[i + 2] << 8 | in[i + 3])
                               : (uint32_t)(in[i + 3] << 8 | in[i + 2]);
      if (lo >= 0xDC00 && lo < 0xE000) {
        u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
        i += 2;
      } else {
        u = 0xFFFD;
      }
    } else if (u >= 0xD800 && u < 0xE000) {
      u = 0xFFFD;
    }
    size_t n = put_utf8(u, out, pos, out_len);
    if (n == 0)
      break;
    pos += n;
  }
  out[pos] = '\0';
  return pos;
}

bool vhd_utf8_valid(const char *in) {
  const unsigned char *s = (const unsigned char *)in;
  while (*s) {
    int n = *s < 0x80 ? 0 : (*s & 0xE0) == 0xC0 ? 1 : (*s & 0xF0) == 0xE0 ? 2
                                : (*s & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0)
      return false;
    uint32_t cp = n == 0 ? *s : (uint32_t)(*s & (0x3F >> n));
    for (int k = 1; k <= n; k++) {
      if ((s[k] & 0xC0) != 0x80)
        return false;
      cp = cp << 6 | (s[k] & 0x3F);
    }
    static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    s += n + 1;
  }
  return true;
}

size_t vhd_utf8_to_utf16(const char *in, bool big_endian, uint8_t *out, size_t out_len) {
  const unsigned char *s = (const unsigned char *)in;
  size_t pos = 0;
  while (*s) {
    uint32_t cp;
    if (*s < 0x80) {
      cp = *s++;
    } else if ((*s & 0xE0) == 0xC0 && s[1]) {
      cp = (uint32_t)(*s & 0x1F) << 6 | (s[1] & 0x3F);
      s += 2;
    } else if ((*s & 0xF0) == 0xE0 && s[1] && s[2]) {
      cp = (uint32_t)(*s & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
      s += 3;
    } else if ((*s & 0xF8) == 0xF0 && s[1] && s[2] && s[3]) {
      cp = (uint32_t)(*s & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
           (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
      s += 4;
    } else {
      cp = 0xFFFD;
      s++;
    }
    uint16_t units[2];
    int n = 1;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      units[0] = (uint16_t)(0xD800 + (cp >> 10));
      units[1] = (uint16_t)(0xDC00 + (cp & 0x3FF));
      n = 2;
    } else {
      units[0] = (uint16_t)cp;
    }
    if (pos + 2 * (size_t)n > out_len)
      break;
    for (int k = 0; k < n; k++) {
      out[pos + (big_endian ? 0 : 1)] = (uint8_t)(units[k] >> 8);
      out[pos + (big_endian ? 1 : 0)] = (uint8_t)units[k];
      pos += 2;
    }
  }
  return pos;
}
