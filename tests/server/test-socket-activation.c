/* systemd socket activation (LISTEN_PID/LISTEN_FDS, the socket on fd 3):
 * through libnbd's nbd_connect_systemd_socket_activation, and with a listening
 * socket we pass ourselves, so that several clients can use it in turn and the
 * server's exit status on SIGTERM is ours to check. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SIZE (8 * MiB)

static uint8_t *expected;

static void io(struct nbd_handle *h, uint32_t seed) {
  CHECK(nbd_get_size(h) == (int64_t)SIZE, "size %" PRId64, nbd_get_size(h));
  uint64_t off = seed * MiB + 99;
  pattern_fill(expected + off, 64 * KiB, off, seed);
  NBD_OK(nbd_pwrite(h, expected + off, 64 * KiB, off, 0));
  uint8_t *buf = malloc(SIZE);
  NBD_OK(nbd_pread(h, buf, SIZE, 0, 0));
  CHECK(memcmp(buf, expected, SIZE) == 0, "data read back");
  free(buf);
}

static void via_libnbd(const char *img) {
  struct nbd_handle *h = nbd_create();
  const char *argv[] = {harness_vhdnbd(), img, NULL};
  NBD_OK(nbd_connect_systemd_socket_activation(h, (char **)argv));
  io(h, 1);
  NBD_OK(nbd_flush(h, 0));
  NBD_OK(nbd_shutdown(h, 0));
  /* An activated server keeps listening after its client leaves. */
  NBD_OK(nbd_kill_subprocess(h, SIGTERM));
  nbd_close(h);
}

static void via_own_socket(const char *img) {
  const char *path = harness_path("activation.sock");
  char sock[4096];
  XSNPRINTF(sock, sizeof sock, "%s", path);
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  XSNPRINTF(sun.sun_path, sizeof sun.sun_path, "%s", sock);
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(lfd, 16) < 0)
    FAIL("listening socket %s: %s", sock, strerror(errno));

  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    if (lfd != 3) {
      dup2(lfd, 3);
      close(lfd);
    }
    char pidstr[32];
    snprintf(pidstr, sizeof pidstr, "%d", (int)getpid());
    setenv("LISTEN_PID", pidstr, 1);
    setenv("LISTEN_FDS", "1", 1);
    execl(harness_vhdnbd(), harness_vhdnbd(), img, (char *)NULL);
    _exit(127);
  }
  close(lfd);

  /* The socket already listens: clients may connect before the server runs. */
  for (uint32_t i = 2; i <= 4; i++) {
    struct nbd_handle *h = harness_connect(sock, "");
    io(h, i);
    harness_close(h);
  }
  struct nbd_handle *a = harness_connect(sock, ""), *b = harness_connect(sock, "");
  io(a, 5);
  io(b, 6);
  harness_close(a);
  harness_close(b);

  kill(pid, SIGTERM);
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
    FAIL("socket-activated vhdnbd did not exit within 10 s of SIGTERM");
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "socket-activated vhdnbd exited with status 0x%x on SIGTERM", status);
}

int main(void) {
  harness_init("test-socket-activation", 60);
  char img[4096];
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  expected = calloc(1, SIZE);

  via_libnbd(img);
  via_own_socket(img);

  CHECK(harness_check_image(img) == 0, "%s is not clean", img);
  harness_expect_image_content(img, expected, SIZE, true);
  free(expected);
  return harness_finish();
}
