/* fuzz-nbd-server.c: one client connection of the real server, from the
 * greeting to the close, with the bytes the client sends taken from the
 * input.
 *
 * The server's own handshake.c, transmission.c, connection.c (and its
 * conn-*.c), queue.c, ops.c and exports.c run on a real libuv loop and serve three real images
 * (in memfds, rewritten before each input): "" dynamic, "diff" differencing
 * (its parent at /proc/self/fd/900, see vhd-parent.h) and "fixed", fixed and
 * read-only.  Only the socket is missing: fake-uv.c answers the stream calls
 * and fake-workers.c runs the image I/O on this thread when the harness says,
 * so an input replays exactly.
 *
 * Input layout:
 *   byte 0     settings: bits 0-1 TLS (0, 1 off; 2 on; 3 require, with PSK
 *              credentials), bit 2 --read-only, bit 3 a --max-inflight of
 *              16 KiB, bit 4 a server shutdown (as on SIGTERM) once the
 *              input is used up, before the client's EOF;
 *   bytes 1-4  the schedule: how the input is cut into reads, how much each
 *              try-write takes, which finished work and writes complete in
 *              which order, and the rare reset connection or failed write
 *              (a generator seeded with these bytes);
 *   the rest   what the client sends, then EOF.
 *
 * Each input must end with the connection closed and freed, nothing left in
 * flight (requests, queue entries, writes, buffered byte counts) and the
 * images closing cleanly; any memory left is a leak. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bufpool.h"
#include "fake-uv.h"
#include "fake-workers.h"
#include "fuzz-common.h"
#include "log.h"
#include "server.h"
#include "vhd-parent.h"

#define HEADER 5
#define MAX_STEPS 200000u   /* loop iterations per input: far above any real need */
#define SMALL_INFLIGHT (16u * 1024)

/* What main.c would hold. */
struct server server;
void server_check_done(struct server *srv) { (void)srv; }

struct image {
  const char *name;
  const char *description;
  bool readonly;
  uint8_t *bytes;
  size_t len;
  int fd;
  char path[64];
};

static struct image images[] = {
    {.name = ""},
    {.name = "diff"},
    {.name = "fixed", .description = "a fixed disk", .readonly = true},
};
#define N_IMAGES (sizeof images / sizeof images[0])

static uv_loop_t loop;
static struct tls_creds *creds;

static void die(const char *what, const char *why) {
  fprintf(stderr, "fuzz-nbd-server: %s: %s\n", what, why);
  abort();
}

static void put(vhd_t *v, uint64_t off, size_t len, uint8_t seed) {
  uint8_t buf[8192];
  struct vhd_err err = {.msg = ""};
  if (len > sizeof buf)
    abort();
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed + i * 5);
  if (vhd_write(v, buf, off, len, 0, &err) < 0)
    die("writing a seed image", err.msg);
}

static vhd_t *create(const char *path, enum vhd_type type, uint64_t size, const char *parent) {
  struct vhd_create_opts co = {
      .type = type, .size = size, .block_size = 4096, .exact_size = true, .parent = parent};
  struct vhd_err err = {.msg = ""};
  if (vhd_create(path, &co, &err) < 0)
    die(path, err.msg);
  struct vhd_open_opts oo = {.flags = VHD_OPEN_NOLOCK};
  vhd_t *v;
  if (vhd_open(path, &oo, &v, &err) < 0)
    die(path, err.msg);
  return v;
}

static void done(vhd_t *v, const char *path, struct image *img) {
  struct vhd_err err = {.msg = ""};
  if (vhd_close(v, &err) < 0)
    die(path, err.msg);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0)
    die(path, strerror(errno));
  img->len = (size_t)st.st_size;
  img->bytes = malloc(img->len);
  if (!img->bytes || pread(fd, img->bytes, img->len, 0) != (ssize_t)img->len)
    die(path, "cannot read it back");
  close(fd);
  unlink(path);
  img->fd = memfd_create("vhdnbd-fuzz-export", MFD_CLOEXEC);
  if (img->fd < 0)
    die("memfd_create", strerror(errno));
  snprintf(img->path, sizeof img->path, "/proc/self/fd/%d", img->fd);
}

/* The images, made once by the engine itself: data in whole blocks, partial
 * blocks (bitmaps half set) and holes, so that reads, block status and
 * writes meet every kind of run. */
static void make_images(void) {
  int r = fuzz_vhd_install_parent();
  if (r < 0)
    die("the differencing parent", strerror(-r));
  const char *tmp = getenv("TMPDIR");
  char dir[4096], path[4200], parent[4200];
  snprintf(dir, sizeof dir, "%s/vhdnbd-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    die("mkdtemp", strerror(errno));

  snprintf(path, sizeof path, "%s/dynamic.vhd", dir);
  vhd_t *v = create(path, VHD_TYPE_DYNAMIC, 256 * 1024, NULL);
  put(v, 0, 4096, 1);
  put(v, 8192 + 1024, 1536, 2);
  put(v, 65536 - 512, 1024, 3);
  put(v, 256 * 1024 - 4096, 4096, 4);
  done(v, path, &images[0]);

  snprintf(parent, sizeof parent, "%s/" FUZZ_PARENT_NAME, dir);
  if ((r = fuzz_vhd_make_parent(parent)) < 0)
    die("the differencing parent", strerror(-r));
  snprintf(path, sizeof path, "%s/diff.vhd", dir);
  v = create(path, VHD_TYPE_DIFFERENCING, 0, parent);
  put(v, 4096 + 512, 512, 5);
  put(v, 16384, 4096, 6);
  done(v, path, &images[1]);
  unlink(parent);

  snprintf(path, sizeof path, "%s/fixed.vhd", dir);
  v = create(path, VHD_TYPE_FIXED, 64 * 1024, NULL);
  put(v, 512, 2048, 7);
  done(v, path, &images[2]);
  rmdir(dir);
}

/* PSK credentials, so that STARTTLS starts a real TLS handshake (which the
 * fuzzed bytes then feed).  Without them TLS settings fall back to off. */
static void load_tls(void) {
  static const char psk[] = "fuzz:0123456789abcdef0123456789abcdef\n";
  int fd = memfd_create("vhdnbd-fuzz-psk", MFD_CLOEXEC);
  if (fd < 0 || write(fd, psk, sizeof psk - 1) != (ssize_t)(sizeof psk - 1)) {
    if (fd >= 0)
      close(fd);
    return;
  }
  char path[64], err[256];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  if (tls_creds_load(NULL, path, false, &creds, err, sizeof err) < 0) {
    fprintf(stderr, "warning: no TLS in fuzz-nbd-server: %s\n", err);
    creds = NULL;
    close(fd);
  }
  /* Otherwise the memfd stays open: GnuTLS reads the key file at each
   * handshake. */
}

static void setup_once(void) {
  const char *v = getenv("FUZZ_SERVER_LOG");
  log_set_level(v && *v && strcmp(v, "0") != 0 ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERR);
  if (uv_loop_init(&loop) < 0)
    die("uv_loop_init", "failed");
  server.loop = &loop;
  /* As main.c may set them: two lanes, so the lane choice runs too, and
   * WRITEs tried on the loop first. */
  server.write_lanes = 2;
  server.loop_writes = true;
  if (loops_start(&loop, 1, SERVER_DEFAULT_MAX_INFLIGHT) < 0)
    die("loops_start", "failed");
  /* The harness runs the flush phases itself, around its events. */
  uv_prepare_stop(&loops_main()->flush_prepare);
  uv_check_stop(&loops_main()->flush_check);
  make_images();
  load_tls();
}

static void reset_image(struct image *img) {
  if (ftruncate(img->fd, 0) < 0 || pwrite(img->fd, img->bytes, img->len, 0) != (ssize_t)img->len)
    die("rewriting an export image", strerror(errno));
}

/* reload.c (SIGHUP) is not linked: this harness never reloads, so no
 * export is ever retired and this is never reached. */
void reload_retired_unused(struct export *e) {
  FUZZ_ASSERT(false, "export '%s' retired, but the harness never reloads", e->name);
}

bool reload_conn_uses_retired(const struct connection *c) {
  (void)c;
  return false;
}

static void settings_for(struct settings *s, uint8_t bits) {
  memset(s, 0, sizeof *s);
  s->stdio = true;
  s->readonly = bits & 4;
  s->max_inflight = bits & 8 ? SMALL_INFLIGHT : SERVER_DEFAULT_MAX_INFLIGHT;
  s->threads = 1;
  s->tls = !creds ? TLS_OFF : (bits & 3) == 2 ? TLS_ON : (bits & 3) == 3 ? TLS_REQUIRE : TLS_OFF;
  for (size_t i = 0; i < N_IMAGES; i++) {
    struct image *img = &images[i];
    int r = settings_add_export(s, img->name, img->path, img->description, img->readonly,
                                img->readonly, "fuzz");
    FUZZ_ASSERT(r == 0, "settings_add_export: %s", strerror(-r));
  }
}

/* ---- the client and the loop ---- */

struct client {
  const uint8_t *data;
  size_t len, pos;
  bool shutdown_at_end, shut_down;
  struct fuzz_rng *rng;
};

static void server_shutdown(void) {
  server.shutting_down = true;
  conns_shutdown(&server, false);
}

/* The next read: a slice of the input cut by the schedule, or EOF; rarely a
 * connection reset, which ends the input. */
static void client_send(struct client *c) {
  if (c->pos == c->len) {
    if (c->shutdown_at_end && !c->shut_down) {
      c->shut_down = true;
      server_shutdown();
      return;
    }
    fake_uv_deliver_end(UV_EOF);
    return;
  }
  if (fuzz_rng_below(c->rng, 256) == 0) {
    fake_uv_deliver_end(UV_ECONNRESET);
    c->pos = c->len;
    return;
  }
  size_t left = c->len - c->pos, n;
  /* Real clients mostly send whole messages and wait for the answer: reads
   * that end where the server's current message ends come often (they let
   * the bytes after STARTTLS reach TLS), arbitrary cuts the rest of the time. */
  const struct connection *conn = loops_main()->conns;
  uint64_t wanted = conn && !conn->tls ? conn->want_len - conn->want_done : 0;
  switch (fuzz_rng_below(c->rng, 8)) {
  case 0:
    n = left;
    break;
  case 1:
  case 2:
  case 3:
    n = wanted ? (size_t)(wanted < left ? wanted : left) : 1 + (size_t)fuzz_rng_below(c->rng, 64);
    break;
  case 4:
    n = 1 + (size_t)fuzz_rng_below(c->rng, 8);
    break;
  case 5:
    n = 1 + (size_t)fuzz_rng_below(c->rng, 64);
    break;
  default:
    n = 1 + (size_t)fuzz_rng_below(c->rng, 4096);
    break;
  }
  if (n > left)
    n = left;
  c->pos += fake_uv_deliver(c->data + c->pos, n);
}

/* One I/O event, as the poll phase of a loop iteration would deliver it:
 * input, a write or shutdown finishing, or a worker's result.  Returns
 * false when none can happen. */
static bool one_event(struct client *c) {
  enum { READ, WRITE, SHUTDOWN, WORK } kinds[4];
  int n = 0;
  if (fake_uv_reading())
    kinds[n++] = READ;
  if (fake_uv_pending_writes())
    kinds[n++] = WRITE;
  else if (fake_uv_shutdown_pending())
    kinds[n++] = SHUTDOWN;
  if (fake_workers_pending())
    kinds[n++] = WORK;
  if (n == 0)
    return false;
  switch (kinds[fuzz_rng_below(c->rng, (uint64_t)n)]) {
  case READ:
    client_send(c);
    break;
  case WRITE:
    fake_uv_complete_write();
    break;
  case SHUTDOWN:
    fake_uv_complete_shutdown();
    break;
  case WORK:
    /* The oldest most of the time, as a pool of threads mostly does. */
    fake_workers_complete(fuzz_rng_below(c->rng, 2)
                              ? 0
                              : (size_t)fuzz_rng_below(c->rng, fake_workers_pending()));
    break;
  }
  return true;
}

static void run_connection(struct client *c) {
  int r = conn_start_stdio();
  FUZZ_ASSERT(r == 0, "conn_start_stdio: %s", uv_strerror(r));
  unsigned idle = 0;
  for (unsigned steps = 0; server.n_conns > 0; steps++) {
    FUZZ_ASSERT(steps < MAX_STEPS, "the connection is still open after %u loop iterations",
                steps);
    /* Timers and close callbacks; streams being closed first cancel their
     * writes, as libuv does before the close callback. */
    fake_uv_cancel_if_closing();
    uv_run(&loop, UV_RUN_NOWAIT);
    if (server.n_conns == 0)
      break;
    /* The prepare phase (loops.c: on_flush_prepare). */
    conn_flush_all(loops_main());
    loops_main()->inline_bytes = 0;
    bool any = false;
    for (unsigned e = 1 + (unsigned)fuzz_rng_below(c->rng, 3); e > 0; e--) {
      if (!one_event(c))
        break;
      any = true;
    }
    /* The check phase (loops.c: on_flush_check). */
    conn_flush_all(loops_main());
    if (any) {
      idle = 0;
      continue;
    }
    if (c->shutdown_at_end && !c->shut_down) {
      /* Not reading and nothing in flight: a shutdown is what may come. */
      c->shut_down = true;
      server_shutdown();
      continue;
    }
    /* Pending closes and zero-delay timers need an iteration or two. */
    FUZZ_ASSERT(++idle < 4,
                "the connection is stuck: open, not reading, with nothing in flight");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    ready = true;
    setup_once();
  }
  if (size < HEADER)
    return 0;
  struct fuzz_rng rng;
  fuzz_rng_seed(&rng, data + 1, HEADER - 1);
  fake_uv_reset(&rng);

  for (size_t i = 0; i < N_IMAGES; i++)
    reset_image(&images[i]);
  struct settings cfg;
  settings_for(&cfg, data[0]);
  server.cfg = &cfg;
  server.tls = cfg.tls == TLS_OFF ? NULL : creds;
  loops_main()->max_inflight = cfg.max_inflight;
  int r = exports_open(&server, &cfg);
  FUZZ_ASSERT(r == 0, "the exports do not open: %s", strerror(-r));

  struct client c = {.data = data + HEADER,
                     .len = size - HEADER,
                     .shutdown_at_end = data[0] & 16,
                     .rng = &rng};
  run_connection(&c);

  FUZZ_ASSERT(fake_workers_pending() == 0, "work left after the connection closed");
  FUZZ_ASSERT(fake_uv_pending_writes() == 0 && !fake_uv_shutdown_pending(),
              "writes left after the connection closed");
  FUZZ_ASSERT(loops_main()->inflight_bytes == 0,
              "%llu bytes still counted in flight after the connection closed",
              (unsigned long long)loops_main()->inflight_bytes);
  FUZZ_ASSERT(loops_main()->outq_head == NULL, "a closed connection is still listed for output");
  FUZZ_ASSERT(atomic_load(&loops_main()->serving) == 0,
              "a closed connection is still counted as served");
  for (size_t i = 0; i < server.n_exports; i++)
    FUZZ_ASSERT(queue_empty(&server.exports[i]->queue), "export '%s': requests left queued",
                server.exports[i]->name);
  log_msg(LOG_LEVEL_DEBUG, "fuzz: %llu bytes sent to the client",
          (unsigned long long)fake_uv_bytes_out());
  size_t head_len;
  const uint8_t *head = fake_uv_head_out(&head_len);
  FUZZ_ASSERT(head_len < 8 || memcmp(head, "NBDMAGIC", 8) == 0,
              "the server's first bytes are not the greeting");

  r = exports_close(&server);
  FUZZ_ASSERT(r == 0, "closing the exports: %s", strerror(-r));
  settings_free(&cfg);
  bufpool_drain();
  uv_timer_stop(&loops_main()->resume_timer);
  server.cfg = NULL;
  server.tls = NULL;
  server.shutting_down = false;
  loops_main()->inflight_blocked = false;
  loops_main()->inline_bytes = 0;
  loops_set_shutdown(0);
  fake_uv_reset(NULL);
  return 0;
}
