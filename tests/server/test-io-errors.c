/* Backend failures reach the client as errors, never as success and never as
 * a dead server: with the engine's fault injection armed (VHDNBD_FAULT_AFTER,
 * every image write and sync fails after the Nth, as on a dead disk), WRITE
 * and FLUSH fail with EIO, writes answered before the fault still read back,
 * other connections keep working, and the server shuts down without crashing. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

#define SIZE (64 * MiB)

int main(void) {
  harness_init("test-io-errors", 60);
  char sock[4096], img[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));

  setenv("VHDNBD_FAULT_AFTER", "40", 1);
  pid_t pid = harness_start_server_image(sock, img, false);
  unsetenv("VHDNBD_FAULT_AFTER");

  struct nbd_handle *h = harness_connect(sock, "");
  static uint8_t buf[32][4096];
  int ok = 0, i;
  /* Each write allocates a fresh block: several image writes apiece. */
  for (i = 0; i < 32; i++) {
    pattern_fill(buf[i], sizeof buf[i], (uint64_t)i * 2 * MiB, 4);
    if (nbd_pwrite(h, buf[i], sizeof buf[i], (uint64_t)i * 2 * MiB, 0) == -1) {
      CHECK(nbd_get_errno() == EIO, "write %d failed with %s, expected EIO", i,
            nbd_get_error());
      break;
    }
    ok++;
  }
  harness_note("%d writes succeeded before the fault", ok);
  CHECK(i < 32, "no write failed: is VHDNBD_FAULT_AFTER honoured?");
  CHECK(ok > 0, "the first write already failed");

  /* Nothing can be made durable any more: FLUSH must not claim success. */
  NBD_ERRNO(nbd_flush(h, 0), EIO);
  uint8_t more[4096] = {1};
  NBD_ERRNO(nbd_pwrite(h, more, sizeof more, 40 * MiB, 0), EIO);

  /* Answered writes still read back, here and on a new connection. */
  uint8_t back[4096];
  for (int j = 0; j < ok; j++) {
    NBD_OK(nbd_pread(h, back, sizeof back, (uint64_t)j * 2 * MiB, 0));
    CHECK(memcmp(back, buf[j], sizeof back) == 0, "write %d answered but not read back", j);
  }
  struct nbd_handle *h2 = harness_connect(sock, "");
  NBD_OK(nbd_pread(h2, back, sizeof back, 0, 0));
  CHECK(memcmp(back, buf[0], sizeof back) == 0, "second connection: data");
  harness_close(h2);
  harness_close(h);

  /* The final flush fails too, so a non-zero exit is fair; a crash is not. */
  int status = harness_stop_server(pid, SIGTERM, 10);
  CHECK(WIFEXITED(status), "the server died of signal %d after disk errors",
        WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  harness_note("server exit status after disk errors: %d", WEXITSTATUS(status));
  return harness_finish();
}
