/* vhd-parent.c: builds the fixed parent of the differencing fuzz seeds. */
#include "config.h"

#include "vhd-parent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "endian-be.h"
#include "vhd.h"

#define FOOTER 512u

/* Not random: the seeds' parent unique id must match across processes. */
static const uint8_t parent_uuid[16] = "vhdnbd-fuzz-prnt";

static uint32_t footer_checksum(const uint8_t *f) {
  uint32_t sum = 0;
  for (unsigned i = 0; i < FOOTER; i++)
    if (i < 64 || i >= 68)
      sum += f[i];
  return ~sum;
}

static int set_uuid_at(int fd, off_t off) {
  uint8_t f[FOOTER];
  if (pread(fd, f, sizeof f, off) != (ssize_t)sizeof f)
    return -EIO;
  if (memcmp(f, "conectix", 8) != 0)
    return 0; /* fixed disks have no copy at 0 */
  memcpy(f + 68, parent_uuid, 16);
  be32_store(f + 64, footer_checksum(f));
  if (pwrite(fd, f, sizeof f, off) != (ssize_t)sizeof f)
    return -EIO;
  return 0;
}

static int fill(vhd_t *v, uint64_t off, size_t len, uint8_t seed) {
  uint8_t buf[8192];
  if (len > sizeof buf)
    return -EINVAL;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed + i * 7);
  return vhd_write(v, buf, off, len, 0, NULL);
}

int fuzz_vhd_make_parent(const char *path) {
  struct vhd_create_opts co = {
      .type = VHD_TYPE_DYNAMIC, .size = 64 * 1024, .block_size = 4096, .exact_size = true};
  struct vhd_err err;
  int r = vhd_create(path, &co, &err);
  if (r < 0) {
    fprintf(stderr, "fuzz parent: %s\n", err.msg);
    return r;
  }
  vhd_t *v;
  struct vhd_open_opts oo = {.flags = VHD_OPEN_NOLOCK};
  if ((r = vhd_open(path, &oo, &v, &err)) < 0) {
    fprintf(stderr, "fuzz parent: %s\n", err.msg);
    return r;
  }
  /* Whole blocks, a partial block and a single sector, so that the child
   * reads through every kind of parent run. */
  if ((r = fill(v, 4096, 8192, 0x11)) < 0 || (r = fill(v, 20480 + 1024, 1536, 0x22)) < 0 ||
      (r = fill(v, 65536 - 512, 512, 0x33)) < 0) {
    vhd_abandon(v);
    return r;
  }
  if ((r = vhd_close(v, &err)) < 0)
    return r;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size < (off_t)(2 * FOOTER)) {
    close(fd);
    return -EIO;
  }
  r = set_uuid_at(fd, 0);
  if (r == 0)
    r = set_uuid_at(fd, st.st_size - FOOTER);
  close(fd);
  return r;
}

int fuzz_vhd_install_parent(void) {
  static int done, result;
  if (done)
    return result;
  done = 1;
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/vhdnbd-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    return result = -errno;
  char path[4200];
  snprintf(path, sizeof path, "%s/" FUZZ_PARENT_NAME, dir);
  int r = fuzz_vhd_make_parent(path);
  int src = r == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
  unlink(path);
  rmdir(dir);
  if (r < 0)
    return result = r;
  if (src < 0)
    return result = -errno;
  /* A memfd, so nothing is left on disk when the process dies. */
  int mfd = memfd_create("vhdnbd-fuzz-parent", 0);
  uint8_t buf[16384];
  ssize_t n;
  off_t off = 0;
  while (mfd >= 0 && (n = read(src, buf, sizeof buf)) > 0) {
    if (pwrite(mfd, buf, (size_t)n, off) != n) {
      r = -EIO;
      break;
    }
    off += n;
  }
  close(src);
  if (mfd < 0)
    return result = -errno;
  if (r == 0 && dup2(mfd, FUZZ_PARENT_FD) < 0)
    r = -errno;
  close(mfd);
  return result = r;
}
