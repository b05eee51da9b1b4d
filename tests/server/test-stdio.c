/* vhdnbd -s: one client on stdin/stdout.  Through libnbd's
 * nbd_connect_command (read-write and -r), and on a socketpair we set up
 * ourselves so the server's exit status is ours to check: it must exit 0 once
 * the client disconnects, with the writes in the image. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SIZE (8 * MiB)

static uint8_t *expected;

static void io(struct nbd_handle *h, uint32_t seed) {
  CHECK(nbd_get_size(h) == (int64_t)SIZE, "size %" PRId64, nbd_get_size(h));
  uint64_t off = seed * 3 * MiB / 2 + 1234;
  pattern_fill(expected + off, MiB, off, seed);
  NBD_OK(nbd_pwrite(h, expected + off, MiB, off, 0));
  NBD_OK(nbd_flush(h, 0));
  uint8_t *buf = malloc(SIZE);
  NBD_OK(nbd_pread(h, buf, SIZE, 0, 0));
  CHECK(memcmp(buf, expected, SIZE) == 0, "data read back over stdio");
  free(buf);
}

static void via_connect_command(const char *img) {
  struct nbd_handle *h = nbd_create();
  const char *argv[] = {harness_vhdnbd(), "-s", img, NULL};
  NBD_OK(nbd_connect_command(h, (char **)argv));
  io(h, 1);
  NBD_OK(nbd_shutdown(h, 0));
  nbd_close(h); /* reaps the server: hangs (watchdog) if it does not exit */

  h = nbd_create();
  const char *argv_ro[] = {harness_vhdnbd(), "-s", "-r", img, NULL};
  NBD_OK(nbd_connect_command(h, (char **)argv_ro));
  CHECK(nbd_is_read_only(h) == 1, "-s -r: not read-only");
  NBD_OK(nbd_set_strict_mode(h, 0));
  uint8_t buf[512] = {1};
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 0, 0), EPERM);
  NBD_OK(nbd_pread(h, buf, sizeof buf, 1234 + 3 * MiB / 2, 0));
  CHECK(memcmp(buf, expected + 1234 + 3 * MiB / 2, sizeof buf) == 0, "-s -r: data");
  NBD_OK(nbd_shutdown(h, 0));
  nbd_close(h);
}

/* stdin and stdout are one end of a socketpair. */
static void via_socketpair(const char *img, bool disc) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    FAIL("socketpair: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(sv[1], 0);
    dup2(sv[1], 1);
    execl(harness_vhdnbd(), harness_vhdnbd(), "-s", img, (char *)NULL);
    _exit(127);
  }
  close(sv[1]);
  struct nbd_handle *h = nbd_create();
  NBD_OK(nbd_connect_socket(h, sv[0]));
  io(h, disc ? 2 : 3);
  if (disc)
    NBD_OK(nbd_shutdown(h, 0));
  nbd_close(h); /* without DISC: the client just hangs up */

  int status = -1;
  for (int i = 0; i < 200; i++) {
    if (waitpid(pid, &status, WNOHANG) == pid)
      break;
    status = -1;
    usleep(50000);
  }
  if (status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL("vhdnbd -s did not exit within 10 s of its client %s", disc ? "sending DISC" : "hanging up");
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "vhdnbd -s exited with status 0x%x after its client %s", status,
        disc ? "sent DISC" : "hung up");
}

int main(void) {
  harness_init("test-stdio", 60);
  char img[4096];
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  expected = calloc(1, SIZE);

  via_connect_command(img);
  via_socketpair(img, true);
  via_socketpair(img, false);

  CHECK(harness_check_image(img) == 0, "%s is not clean", img);
  harness_expect_image_content(img, expected, SIZE, true);
  free(expected);
  return harness_finish();
}
