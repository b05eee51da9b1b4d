/* After a failed write-back no FLUSH may claim success, and FLUSH really
 * reaches fdatasync.
 *
 * The engine's fault switch, armed through the environment
 * (VHDNBD_FAULT_MODE, _AFTER, _ERRNO), fails one sync or one write of the
 * server process and then lets everything through again, as a transient
 * disk error would.  Each case serves two exports, "a" (whose image meets
 * the failure) and "b":
 *  - sync-once with EIO, then ENOSPC, on a fixed image: a WRITE succeeds and
 *    the FLUSH fails with the injected error, which shows that FLUSH reached
 *    the sync (nothing else syncs a fixed image).  A second FLUSH fails with
 *    EIO although the disk works again, and so do a FUA WRITE and a plain
 *    WRITE, on this connection and on another; READs go on.
 *  - write-once with ENOSPC on a dynamic image: the first WRITE fails with
 *    ENOSPC, then FLUSH and FUA WRITE fail with EIO.
 *  - sync-once with EIO on a fixed image, reached by an empty WRITE, TRIM
 *    or WRITE_ZEROES with FUA instead of a FLUSH: FUA asks for everything
 *    written before to be durable even when the request itself writes
 *    nothing, so it must sync too (and meet the failure).
 * Each time the server logs the failure once, as an error naming the image
 * and the errno; export "b" still takes writes and flushes; on SIGTERM the
 * server exits 1 (the final flush of "a" fails) without crashing, and both
 * images check clean. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

#define SIZE (8 * MiB)
#define LEN (64 * KiB)

struct fault_case {
  const char *mode;     /* VHDNBD_FAULT_MODE */
  const char *errname;  /* VHDNBD_FAULT_ERRNO */
  int errnum;
  const char *type;     /* image of export "a" */
  int probe;            /* sync-once: what reaches the sync (enum probe) */
};

/* The request that makes the first WRITE durable. */
enum probe { PROBE_FLUSH, PROBE_EMPTY_FUA_WRITE, PROBE_EMPTY_FUA_TRIM, PROBE_EMPTY_FUA_ZERO };
static const char *const probe_names[] = {"FLUSH", "an empty FUA WRITE", "an empty FUA TRIM",
                                          "an empty FUA WRITE_ZEROES"};

static unsigned count_lines_with(const char *text, const char *needle) {
  unsigned n = 0;
  for (const char *line = text; *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (memmem(line, len, needle, strlen(needle)))
      n++;
    line += len + (end ? 1 : 0);
  }
  return n;
}

/* Export "b" is served as if nothing had happened. */
static void check_other_export(const char *sock) {
  static uint8_t buf[LEN], back[LEN];
  struct nbd_handle *h = harness_connect(sock, "b");
  pattern_fill(buf, sizeof buf, 1 * MiB, 7);
  NBD_OK(nbd_pwrite(h, buf, sizeof buf, 1 * MiB, 0));
  NBD_OK(nbd_flush(h, 0));
  NBD_OK(nbd_pwrite(h, buf, sizeof buf, 3 * MiB, LIBNBD_CMD_FLAG_FUA));
  NBD_OK(nbd_pread(h, back, sizeof back, 1 * MiB, 0));
  CHECK(memcmp(back, buf, sizeof back) == 0, "export b: data read back differs");
  harness_close(h);
}

/* Everything that could make data durable fails with EIO; reads go on. */
static void check_refused(struct nbd_handle *h, const char *what) {
  static uint8_t buf[LEN];
  pattern_fill(buf, sizeof buf, 0, 9);
  NBD_ERRNO(nbd_flush(h, 0), EIO);
  NBD_ERRNO(nbd_flush(h, 0), EIO);
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 2 * MiB, LIBNBD_CMD_FLAG_FUA), EIO);
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 4 * MiB, 0), EIO);
  NBD_ERRNO(nbd_zero(h, 4096, 5 * MiB, LIBNBD_CMD_FLAG_FUA), EIO);
  NBD_OK(nbd_pread(h, buf, sizeof buf, 0, 0));
  harness_note("%s: FLUSH, FUA WRITE, WRITE and WRITE_ZEROES fail with EIO, READ works", what);
}

static void run_case(const struct fault_case *fc, unsigned idx) {
  char sock[4096], imga[4096], imgb[4096], log[4096], name[64];
  XSNPRINTF(name, sizeof name, "sock-%u", idx);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path(name));
  XSNPRINTF(name, sizeof name, "a-%u.vhd", idx);
  XSNPRINTF(imga, sizeof imga, "%s", harness_qemu_image(name, fc->type, SIZE));
  XSNPRINTF(name, sizeof name, "b-%u.vhd", idx);
  XSNPRINTF(imgb, sizeof imgb, "%s", harness_qemu_image(name, "dynamic", SIZE));
  XSNPRINTF(name, sizeof name, "server-%u.log", idx);
  XSNPRINTF(log, sizeof log, "%s", harness_path(name));
  char what[192];
  XSNPRINTF(what, sizeof what, "%s %s on a %s image, reached by %s", fc->mode, fc->errname,
            fc->type, probe_names[fc->probe]);

  char ea[4200], eb[4200];
  XSNPRINTF(ea, sizeof ea, "a=%s", imga);
  XSNPRINTF(eb, sizeof eb, "b=%s", imgb);
  const char *args[] = {"-e", ea, "-e", eb, NULL};
  /* The first sync (or write) of the process fails: nothing syncs or writes
   * before the requests below. */
  setenv("VHDNBD_FAULT_MODE", fc->mode, 1);
  setenv("VHDNBD_FAULT_ERRNO", fc->errname, 1);
  setenv("VHDNBD_FAULT_AFTER", "0", 1);
  pid_t pid = harness_start_server_logged(sock, args, log);
  unsetenv("VHDNBD_FAULT_MODE");
  unsetenv("VHDNBD_FAULT_ERRNO");
  unsetenv("VHDNBD_FAULT_AFTER");

  static uint8_t buf[LEN];
  pattern_fill(buf, sizeof buf, 0, 3);
  struct nbd_handle *h = harness_connect(sock, "a");
  if (strcmp(fc->mode, "sync-once") == 0) {
    NBD_OK(nbd_pwrite(h, buf, sizeof buf, 0, 0));
    /* The injected error itself: the request went down to the sync.
     * libnbd sends empty requests only outside its strict mode. */
    NBD_OK(nbd_set_strict_mode(h, nbd_get_strict_mode(h) & ~LIBNBD_STRICT_ZERO_SIZE));
    switch (fc->probe) {
    case PROBE_FLUSH:
      NBD_ERRNO(nbd_flush(h, 0), fc->errnum);
      break;
    case PROBE_EMPTY_FUA_WRITE:
      NBD_ERRNO(nbd_pwrite(h, buf, 0, 4096, LIBNBD_CMD_FLAG_FUA), fc->errnum);
      break;
    case PROBE_EMPTY_FUA_TRIM:
      NBD_ERRNO(nbd_trim(h, 0, 4096, LIBNBD_CMD_FLAG_FUA), fc->errnum);
      break;
    case PROBE_EMPTY_FUA_ZERO:
      NBD_ERRNO(nbd_zero(h, 0, 4096, LIBNBD_CMD_FLAG_FUA), fc->errnum);
      break;
    }
  } else {
    NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 0, 0), fc->errnum);
  }
  check_refused(h, what);
  struct nbd_handle *h2 = harness_connect(sock, "a");
  check_refused(h2, "a second connection");
  harness_close(h2);
  check_other_export(sock);
  harness_close(h);

  /* The failure is logged once, as an error naming the image and errno. */
  CLEANUP_FREE char *text = harness_read_file(log);
  unsigned named = count_lines_with(text, imga);
  CHECK(named == 1, "%s: %u log lines name %s, expected one:\n%s", what, named, imga, text);
  unsigned full = count_lines_with(text, strerror(fc->errnum));
  CHECK(full == 1, "%s: %u log lines say \"%s\", expected one:\n%s", what, full,
        strerror(fc->errnum), text);
  const char *line = strstr(text, imga);
  const char *bol = line;
  while (bol > text && bol[-1] != '\n')
    bol--;
  CHECK(strncmp(bol, "vhdnbd: error: ", 15) == 0 &&
            memmem(bol, (size_t)(strchrnul(line, '\n') - bol), strerror(fc->errnum),
                   strlen(strerror(fc->errnum))),
        "%s: the log line is not an error naming the image and errno:\n%s", what, text);
  CHECK(count_lines_with(text, imgb) == 0, "%s: export b logged something:\n%s", what, text);

  /* The final flush of "a" fails: exit status 1, for that reason only (a
   * sanitizer report would exit 1 too), no crash. */
  int status = harness_stop_server(pid, SIGTERM, 10);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1,
        "%s: server exit status 0x%x, expected 1 (a final flush failed)", what, status);
  CLEANUP_FREE char *after = harness_read_file(log);
  char closing[4200];
  XSNPRINTF(closing, sizeof closing, "export 'a': closing %s: ", imga);
  CHECK(strstr(after, closing) && !strstr(after, "Sanitizer") && !strstr(after, "runtime error"),
        "%s: the server's log does not explain its exit status:\n%s", what, after);
  CHECK(harness_check_image(imga) == 0, "%s: vhdimg check %s is not clean", what, imga);
  CHECK(harness_check_image(imgb) == 0, "%s: vhdimg check %s is not clean", what, imgb);
  harness_note("%s: ok", what);
}

int main(void) {
  harness_init("test-flush-error", 120);
  harness_vhdimg();
  static const struct fault_case cases[] = {
      {"sync-once", "EIO", EIO, "fixed", PROBE_FLUSH},
      {"sync-once", "ENOSPC", ENOSPC, "fixed", PROBE_FLUSH},
      {"write-once", "ENOSPC", ENOSPC, "dynamic", PROBE_FLUSH},
      {"sync-once", "EIO", EIO, "fixed", PROBE_EMPTY_FUA_WRITE},
      {"sync-once", "EIO", EIO, "fixed", PROBE_EMPTY_FUA_TRIM},
      {"sync-once", "EIO", EIO, "fixed", PROBE_EMPTY_FUA_ZERO},
  };
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i], i);
  return harness_finish();
}
