/* harness.h: what every protocol test needs, so each test-<feature>.c reads as
 * the feature it checks: a private temp dir, images made by qemu-img or vhdimg,
 * vhdnbd servers on Unix sockets (killed and reaped at exit), libnbd handles,
 * raw sockets for the bytes libnbd will not send, and data patterns.
 *
 * A failed check prints file:line and the reason and exits 1; every server
 * started is then killed.  harness_finish() stops the servers with SIGTERM and
 * fails the test when one did not exit 0 (a sanitizer report, a crash). */
#ifndef VHDNBD_TEST_HARNESS_H
#define VHDNBD_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libnbd.h>

#include "cleanup.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

#define FAIL(...) harness_fail(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond))                                                               \
      harness_check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);            \
  } while (0)
/* snprintf that fails the test rather than truncate. */
#define XSNPRINTF(buf, size, ...)                                              \
  do {                                                                         \
    int n_ = snprintf((buf), (size), __VA_ARGS__);                             \
    if (n_ < 0 || (size_t)n_ >= (size_t)(size))                                \
      harness_fail(__FILE__, __LINE__, "string too long for %s", #buf);        \
  } while (0)
/* A libnbd call that must succeed: on failure print libnbd's error. */
#define NBD_OK(call)                                                           \
  do {                                                                         \
    if ((call) == -1)                                                          \
      harness_fail(__FILE__, __LINE__, "%s: %s", #call, nbd_get_error());      \
  } while (0)
/* A libnbd call that must fail with errno err; the connection must survive. */
#define NBD_ERRNO(call, err)                                                   \
  harness_expect_errno(__FILE__, __LINE__, #call, (call), (err))

void harness_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
void harness_check_failed(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
void harness_expect_errno(const char *file, int line, const char *what, int r,
                          int err);
void harness_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Exits 77 (automake SKIP) with the reason. */
void harness_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Creates the temp dir, arms a watchdog of `timeout_s` seconds (four times
 * that under AddressSanitizer) for the whole test and locates $VHDNBD / $VHDIMG (skips when the server is not built). */
void harness_init(const char *test_name, unsigned timeout_s);
/* Stops every server still running; returns the test's exit status. */
int harness_finish(void);

const char *harness_tmpdir(void);
/* Returns "<tmpdir>/<name>" in a static ring of buffers (valid for a while). */
const char *harness_path(const char *name);
const char *harness_vhdnbd(void);
const char *harness_vhdimg(void);

/* Runs argv (NULL-terminated) and returns its exit status (or 128+signal). */
int harness_run(const char *const *argv);
/* Like harness_run, but a non-zero status fails the test. */
void harness_run_ok(const char *const *argv);
bool harness_have_program(const char *name);

/* Images (path under the temp dir, from harness_path's ring: copy it to keep it).  type: "dynamic", "fixed".  Made with
 * qemu-img (never with our own tool) so a vhdimg bug cannot hide a server bug. */
const char *harness_qemu_image(const char *name, const char *type, uint64_t size);
/* An image of `type` holding `data` (len bytes = its virtual size), converted
 * from raw by qemu-img. */
const char *harness_qemu_image_from(const char *name, const char *type, const void *data,
                                    size_t len);
/* Made with $VHDIMG create (the only way to get a differencing child). */
const char *harness_vhdimg_create(const char *name, const char *type,
                                  const char *parent, uint64_t size);
/* The whole file as a NUL-terminated string (malloc'd); fails on error. */
char *harness_read_file(const char *path);
/* $VHDIMG check: returns its exit status (0 = clean). */
int harness_check_image(const char *path);
/* Fails unless `path` (a VHD) reads exactly as `expected` (len bytes): the
 * image is converted to raw with `$VHDIMG convert -O raw` and, when qemu can
 * read it (dynamic, fixed), with qemu-img too. */
void harness_expect_image_content(const char *path, const void *expected,
                                  size_t len, bool qemu_can_read);
/* sha256 of a file as hex (static buffer), via sha256sum. */
const char *harness_sha256(const char *path, char out[65]);

/* Servers: `$VHDNBD -U sock --pidfile ... args...` (args NULL-terminated).
 * Returns once the pidfile is written (the server listens). */
pid_t harness_start_server(const char *sock, const char *const *args);
/* Like harness_start_server, with the server's standard error appended to
 * log_path (to check what it logs). */
pid_t harness_start_server_logged(const char *sock, const char *const *args,
                                  const char *log_path);
/* Convenience: one image as the default export, optional extra args. */
pid_t harness_start_server_image(const char *sock, const char *image, bool readonly);
/* Sends sig and reaps within timeout_s (four times that under
 * AddressSanitizer); returns the wait status (or fails). */
int harness_stop_server(pid_t pid, int sig, unsigned timeout_s);
bool harness_server_alive(pid_t pid);

/* libnbd: a handle connected to export `name` over `sock`; fails on error. */
struct nbd_handle *harness_connect(const char *sock, const char *name);
/* A handle not yet connected (caller sets options), with the export name set. */
struct nbd_handle *harness_handle(const char *name);
void harness_close(struct nbd_handle *h);

/* Raw sockets, for malformed traffic.  All reads and writes time out (15 s,
 * 60 s under AddressSanitizer): a bound on a hang, never an expected result. */
int raw_connect(const char *sock);
/* Writes all of buf; returns 0 or -errno (EPIPE when the server hung up). */
int raw_write(int fd, const void *buf, size_t len);
/* Reads exactly len bytes; returns 0, -ECONNRESET/0-length EOF as -EPIPE,
 * -ETIMEDOUT when nothing comes within the timeout. */
int raw_read(int fd, void *buf, size_t len);
/* Waits until the server closes fd (reading and dropping whatever it sends
 * first); returns 0 when it closed, -ETIMEDOUT when it kept it open for
 * timeout_ms (four times that under AddressSanitizer). */
int raw_expect_close(int fd, unsigned timeout_ms);
/* Reads the greeting and sends the client flags; fails the test if the
 * greeting is not fixed newstyle. */
void raw_handshake(int fd, uint32_t client_flags);
int raw_send_option(int fd, uint32_t option, const void *data, uint32_t len);
/* Reads one option reply; *data (may be NULL) receives a malloc'd payload. */
int raw_recv_option_reply(int fd, uint32_t *option, uint32_t *type, void **data,
                          uint32_t *len);
/* Sends NBD_OPT_GO for `name` (no info requests) and reads replies until the
 * final one; returns its type.  *size and *flags get NBD_INFO_EXPORT's values. */
uint32_t raw_opt_go(int fd, const char *name, uint64_t *size, uint16_t *flags);
int raw_send_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
                     uint64_t offset, uint32_t len);
/* Reads a simple reply; returns 0 or -errno (transport); *error gets the NBD error. */
int raw_recv_simple_reply(int fd, uint64_t *cookie, uint32_t *error);
/* Extended headers: a 32-byte request with a 64-bit length (payload, if
 * any, sent separately with raw_write), and one 32-byte reply chunk with its
 * payload (malloc'd into *payload, NULL when empty); fails the test on a
 * wrong magic or a payload over 64 MiB. */
int raw_send_request_ext(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
                         uint64_t offset, uint64_t len);
struct raw_ext_reply {
  uint16_t flags, type;
  uint64_t cookie, offset, length;
  uint8_t *payload;
};
int raw_recv_ext_reply(int fd, struct raw_ext_reply *rep);

/* Deterministic data: byte at absolute offset off of stream `seed`. */
void pattern_fill(void *buf, size_t len, uint64_t off, uint32_t seed);
/* Returns the first offset (relative to buf) that differs, or -1. */
long pattern_check(const void *buf, size_t len, uint64_t off, uint32_t seed);
bool is_zero(const void *buf, size_t len);

#endif
