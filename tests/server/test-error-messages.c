/* What a client is told when the server fails it: the structured error's
 * text says which command failed and why in the client's terms, and names
 * neither the image's path nor file offsets (those stay in the server's log,
 * for the administrator).  The failure: the image file is cut short under
 * the running server, so a READ of a block whose data was cut off fails. */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define SIZE (16 * MiB)

/* libnbd reports each structured error's text through its debug output. */
static char server_messages[8192];
static int on_debug(void *opaque, const char *context, const char *msg) {
  static const char tag[] = "structured error server message: ";
  const char *m = strstr(msg, tag);
  if (m) {
    size_t used = strlen(server_messages);
    snprintf(server_messages + used, sizeof server_messages - used, "%s\n", m + strlen(tag));
  }
  return 0;
}

int main(void) {
  harness_init("test-error-messages", 60);
  char sock[4096], img[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  pid_t pid = harness_start_server_image(sock, img, false);

  struct nbd_handle *h = harness_connect(sock, "");
  static uint8_t buf[64 * 1024];
  pattern_fill(buf, sizeof buf, 4 * MiB, 7);
  NBD_OK(nbd_pwrite(h, buf, sizeof buf, 4 * MiB, 0));
  NBD_OK(nbd_flush(h, 0));

  /* The block's data sits in the second half of the file: cut it off. */
  struct stat st;
  CHECK(stat(img, &st) == 0, "stat %s", img);
  CHECK(truncate(img, 4096) == 0, "truncate %s: %s", img, strerror(errno));

  NBD_OK(nbd_set_debug_callback(h, (nbd_debug_callback){.callback = on_debug}));
  NBD_OK(nbd_set_debug(h, true));
  CHECK(nbd_pread(h, buf, sizeof buf, 4 * MiB, 0) == -1, "a READ of cut-off data succeeded");
  NBD_OK(nbd_set_debug(h, false));
  harness_note("the client was told: %s", server_messages);
  CHECK(strstr(server_messages, "READ failed on the server: Input/output error") != NULL,
        "the failed READ's message does not say what failed: '%s'", server_messages);
  CHECK(strstr(server_messages, img) == NULL && strstr(server_messages, "img.vhd") == NULL,
        "the message sent to the client names the image's path: '%s'", server_messages);
  CHECK(strstr(server_messages, "offset") == NULL,
        "the message sent to the client names file offsets: '%s'", server_messages);

  /* The server still answers, on this connection and on a new one. */
  uint64_t size = 0;
  struct nbd_handle *h2 = harness_connect(sock, "");
  CHECK((size = (uint64_t)nbd_get_size(h2)) == SIZE, "second connection: size %llu",
        (unsigned long long)size);
  harness_close(h2);
  harness_close(h);
  harness_stop_server(pid, SIGKILL, 10); /* the image is damaged on purpose */
  return harness_finish();
}
