/* Clean shutdown: SIGTERM (and SIGINT) while clients are connected, one with
 * answered but unflushed writes, one mid-handshake, one with writes still in
 * flight.  The server exits 0 promptly, the image is check-clean and holds
 * every write that was answered with success. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nbd-proto.h"
#include "harness.h"

#define SIZE (16 * MiB)

struct wr {
  uint64_t off;
  bool done;
  int error;
};

static int wr_done(void *opaque, int *error) {
  struct wr *w = opaque;
  w->done = true;
  w->error = *error;
  return 1;
}

static double elapsed_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void run(int sig, const char *signame) {
  char sock[4096], img[4096], name[64];
  XSNPRINTF(name, sizeof name, "img-%s.vhd", signame);
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image(name, "dynamic", SIZE));
  XSNPRINTF(name, sizeof name, "sock-%s", signame);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path(name));
  pid_t pid = harness_start_server_image(sock, img, false);
  uint8_t *expected = calloc(1, SIZE);

  /* Answered writes, never flushed, allocating several blocks. */
  struct nbd_handle *h = harness_connect(sock, "");
  for (uint64_t off = 0; off < 8 * MiB; off += 2 * MiB + 4096) {
    pattern_fill(expected + off, 300 * KiB, off, 1);
    NBD_OK(nbd_pwrite(h, expected + off, 300 * KiB, off, 0));
  }

  /* A client stuck in the handshake must not hold the shutdown up. */
  int idle = raw_connect(sock);

  /* Writes in flight when the signal lands. */
  struct nbd_handle *busy = harness_connect(sock, "");
  struct wr writes[256];
  uint8_t *wdata = malloc(256 * 4096);
  for (int i = 0; i < 256; i++) {
    writes[i] = (struct wr){.off = 8 * MiB + (uint64_t)i * 16 * KiB};
    pattern_fill(wdata + i * 4096, 4096, writes[i].off, 2);
    NBD_OK(nbd_aio_pwrite(busy, wdata + i * 4096, 4096, writes[i].off,
                          (nbd_completion_callback){.callback = wr_done, .user_data = &writes[i]},
                          0));
  }

  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int status = harness_stop_server(pid, sig, 10);
  harness_note("%s: server exited after %.2f s", signame, elapsed_since(&t0));
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: server exit status 0x%x", signame,
        status);

  /* The clients see the connection end (or ESHUTDOWN), never a hang. */
  uint8_t buf[512];
  CHECK(nbd_pread(h, buf, sizeof buf, 0, 0) == -1, "%s: the server answered after exiting",
        signame);
  for (int i = 0; i < 100 && nbd_aio_in_flight(busy) > 0; i++)
    if (nbd_poll(busy, 100) == -1)
      break;
  int answered = 0, refused = 0;
  for (int i = 0; i < 256; i++) {
    if (writes[i].done && writes[i].error == 0) {
      answered++;
      memcpy(expected + writes[i].off, wdata + i * 4096, 4096);
    } else if (writes[i].done)
      refused++;
  }
  harness_note("%s: %d in-flight writes answered, %d refused, %d never answered", signame,
               answered, refused, 256 - answered - refused);
  nbd_close(h);
  nbd_close(busy);
  close(idle);

  CHECK(harness_check_image(img) == 0, "%s: %s is not clean", signame, img);
  /* Unanswered writes may or may not have landed, but whole or not at all. */
  pid = harness_start_server_image(sock, img, true);
  struct nbd_handle *check = harness_connect(sock, "");
  uint8_t *now = malloc(SIZE);
  NBD_OK(nbd_pread(check, now, SIZE, 0, 0));
  for (int i = 0; i < 256; i++)
    if (!(writes[i].done && writes[i].error == 0)) {
      uint8_t *p = now + writes[i].off;
      CHECK(is_zero(p, 4096) || memcmp(p, wdata + i * 4096, 4096) == 0,
            "%s: an unanswered write left a torn sector at %" PRIu64, signame, writes[i].off);
      memcpy(expected + writes[i].off, p, 4096);
    }
  harness_close(check);
  status = harness_stop_server(pid, SIGTERM, 10);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "read-only server: status 0x%x", status);
  harness_expect_image_content(img, expected, SIZE, true);
  free(now);
  free(wdata);
  free(expected);
}

int main(void) {
  harness_init("test-shutdown", 60);
  run(SIGTERM, "SIGTERM");
  run(SIGINT, "SIGINT");
  return harness_finish();
}
