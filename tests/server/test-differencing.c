/* A three-level differencing chain served over NBD: reads merge the levels
 * (sector by sector, including sub-sector writes whose rest comes from below),
 * block status reports data from any level, writes land in the child only,
 * and the image locks keep a parent in use from being served writable. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbd-proto.h"
#include "harness.h"

#define SIZE (8 * MiB)

static uint8_t *model;

static void write_model(struct nbd_handle *h, uint64_t off, uint64_t len, uint32_t seed) {
  pattern_fill(model + off, len, off, seed);
  NBD_OK(nbd_pwrite(h, model + off, len, off, 0));
}

static void verify(struct nbd_handle *h, const char *what) {
  uint8_t *buf = malloc(SIZE);
  NBD_OK(nbd_pread(h, buf, SIZE, 0, 0));
  if (memcmp(buf, model, SIZE) != 0)
    for (uint64_t i = 0; i < SIZE; i++)
      if (buf[i] != model[i])
        FAIL("%s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", what, i, buf[i], model[i]);
  free(buf);
}

struct map {
  uint8_t flags[SIZE / 512];
  uint64_t pos;
};

static int extent_cb(void *opaque, const char *context, uint64_t offset, uint32_t *e, size_t n,
                     int *error) {
  struct map *m = opaque;
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < n && pos < SIZE; i += 2) {
    for (uint64_t s = pos / 512; s < (pos + e[i]) / 512 && s < SIZE / 512; s++)
      m->flags[s] = (uint8_t)e[i + 1];
    pos += e[i];
  }
  m->pos = pos;
  return 0;
}

/* Sectors reported ZERO must read as zeros; sectors with data below must not be ZERO. */
static void check_map(struct nbd_handle *h) {
  static struct map m;
  m.pos = 0;
  for (int i = 0; m.pos < SIZE; i++) {
    CHECK(i < 10000, "block status makes no progress");
    uint64_t from = m.pos;
    NBD_OK(nbd_block_status(h, SIZE - from, from,
                            (nbd_extent_callback){.callback = extent_cb, .user_data = &m}, 0));
    CHECK(m.pos > from, "block status at %" PRIu64 " described nothing", from);
  }
  for (uint64_t s = 0; s < SIZE / 512; s++) {
    bool zero = is_zero(model + s * 512, 512);
    if (m.flags[s] & NBD_STATE_ZERO)
      CHECK(zero, "sector %" PRIu64 " reported ZERO but holds data", s);
  }
}

/* vhdnbd must refuse to start (non-zero exit within 10 s). */
static void expect_refused(const char *const *args, const char *what) {
  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    const char *argv[16] = {harness_vhdnbd()};
    for (int i = 0; args[i] && i < 14; i++)
      argv[i + 1] = args[i];
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status = -1;
  for (int i = 0; i < 200 && status == -1; i++) {
    if (waitpid(pid, &status, WNOHANG) != pid) {
      status = -1;
      usleep(50000);
    }
  }
  if (status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL("%s: vhdnbd started serving", what);
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0, "%s: status 0x%x", what, status);
}

int main(void) {
  harness_init("test-differencing", 60);
  char sock[4096], sock2[4096], grand[4096], parent[4096], child[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(sock2, sizeof sock2, "%s", harness_path("sock2"));

  /* Grandparent: data in [0,1M) and [6M,7M). */
  model = calloc(1, SIZE);
  pattern_fill(model, MiB, 0, 1);
  pattern_fill(model + 6 * MiB, MiB, 6 * MiB, 1);
  XSNPRINTF(grand, sizeof grand, "%s",
            harness_qemu_image_from("grand.vhd", "dynamic", model, SIZE));
  XSNPRINTF(parent, sizeof parent, "%s",
            harness_vhdimg_create("parent.vhd", "differencing", grand, 0));

  /* Parent: written through the server, partly over the grandparent's data. */
  pid_t pid = harness_start_server_image(sock, parent, false);
  struct nbd_handle *h = harness_connect(sock, "");
  write_model(h, 512 * KiB + 100, 700, 2);
  write_model(h, 2 * MiB, MiB, 2);
  write_model(h, 6 * MiB + 3, 1, 2);
  verify(h, "parent");
  harness_close(h);
  CHECK(harness_stop_server(pid, SIGTERM, 10) == 0, "parent server: bad exit");

  char gsum[65], psum[65], now[65];
  harness_sha256(grand, gsum);
  harness_sha256(parent, psum);
  XSNPRINTF(child, sizeof child, "%s",
            harness_vhdimg_create("child.vhd", "differencing", parent, 0));

  pid = harness_start_server_image(sock, child, false);
  h = harness_handle("");
  NBD_OK(nbd_add_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION));
  NBD_OK(nbd_connect_unix(h, sock));
  verify(h, "child before writes");
  check_map(h);
  write_model(h, 512 * KiB + 300, 1000, 3); /* across the parent's write */
  write_model(h, 2 * MiB + 4096, 10, 3);
  write_model(h, 4 * MiB + 511, 2, 3);      /* over nothing, across a sector edge */
  write_model(h, 6 * MiB, 4096, 3);
  NBD_OK(nbd_zero(h, 50, 100, 0));          /* zeros must hide the grandparent */
  memset(model + 100, 0, 50);
  NBD_OK(nbd_zero(h, 8192, 6 * MiB + 8192, 0));
  memset(model + 6 * MiB + 8192, 0, 8192);
  NBD_OK(nbd_flush(h, 0));
  verify(h, "child after writes");
  check_map(h);

  /* The chain is in use: its members cannot be served writable elsewhere. */
  const char *rw_parent[] = {"-U", sock2, parent, NULL};
  expect_refused(rw_parent, "serving the parent read-write while its child is served");
  const char *rw_grand[] = {"-U", sock2, grand, NULL};
  expect_refused(rw_grand, "serving the grandparent read-write while it is in use");
  const char *rw_child[] = {"-U", sock2, child, NULL};
  expect_refused(rw_child, "serving the child twice");
  harness_close(h);
  CHECK(harness_stop_server(pid, SIGTERM, 10) == 0, "child server: bad exit");

  /* Read-only serving of the child: same content, writes refused. */
  harness_start_server_image(sock, child, true);
  h = harness_connect(sock, "");
  CHECK(nbd_is_read_only(h) == 1, "-r child: not read-only");
  verify(h, "read-only child");
  NBD_OK(nbd_set_strict_mode(h, 0));
  uint8_t b[512] = {0};
  NBD_ERRNO(nbd_pwrite(h, b, sizeof b, 0, 0), EPERM);
  harness_close(h);

  int rc = harness_finish();
  CHECK(strcmp(gsum, harness_sha256(grand, now)) == 0, "the grandparent changed");
  CHECK(strcmp(psum, harness_sha256(parent, now)) == 0, "the parent changed");
  if (rc == 0) {
    CHECK(harness_check_image(child) == 0, "%s is not clean", child);
    harness_expect_image_content(child, model, SIZE, false);
  }
  free(model);
  return rc;
}
