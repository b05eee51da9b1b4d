/* metrics.c: the counters behind --metrics-file and SIGUSR1 (see metrics.h).
 *
 * The text is built on the loop thread from the counters and each image's
 * allocated bytes (memory only: a few hundred lines per export, and the
 * engine's BAT); a worker writes the file, so the loop never waits for the
 * disk.  One write is in flight at a time: a tick that finds the last one
 * unfinished is skipped. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#define N_COMMANDS (NBD_CMD_BLOCK_STATUS + 2) /* the last: unknown commands */
#define N_BUCKETS 7                           /* the last: +Inf */
static const double bucket_le[N_BUCKETS - 1] = {0.0001, 0.001, 0.01, 0.1, 1, 10};

/* NBD errors the server answers with (nbd_errno_to_nbd), then "other". */
static const struct {
  uint32_t value;
  const char *name;
} errnos[] = {
    {NBD_EPERM, "EPERM"},   {NBD_EIO, "EIO"},         {NBD_ENOMEM, "ENOMEM"},
    {NBD_EINVAL, "EINVAL"}, {NBD_ENOSPC, "ENOSPC"},   {NBD_EOVERFLOW, "EOVERFLOW"},
    {NBD_ENOTSUP, "ENOTSUP"}, {NBD_ESHUTDOWN, "ESHUTDOWN"},
};
#define N_ERRNOS (sizeof errnos / sizeof errnos[0] + 1)

struct export_stats {
  uint64_t requests[N_COMMANDS][2]; /* [command][0 ok, 1 error] */
  uint64_t latency[N_COMMANDS][N_BUCKETS]; /* per bucket, not cumulative */
  uint64_t latency_ns[N_COMMANDS]; /* summed */
  uint64_t bytes_read, bytes_written;
  uint64_t on_loop[2]; /* READs, WRITEs served on the loop thread */
  uint64_t from_worker; /* replies a worker sent itself */
  uint64_t spliced;     /* READ replies whose data was spliced */
  uint64_t wspliced;    /* WRITEs whose payload was spliced into the file */
  uint64_t one_lane;    /* plain WRITEs narrowed to one lane */
  uint64_t ahead_pauses; /* reading stopped: WRITE payloads held (write-ahead cap) */
  uint64_t errors[N_ERRNOS];
  uint64_t inflight;
};

static const char *const refusal_reasons[] = {
    "per_address", "max_connections", "evicted", "handshake_timeout", "payload_stalled",
    "not_allowed",
};
#define N_REFUSALS (sizeof refusal_reasons / sizeof refusal_reasons[0])

static struct {
  struct server *srv;
  uint64_t accepted;
  uint64_t refused[N_REFUSALS];
  uv_timer_t timer;
  uv_signal_t sigusr1;
  bool started, timer_started;
  /* The write in flight (loop thread sets it up, a worker runs it). */
  struct work_item work;
  bool writing;
  char *text;
  size_t text_len;
  int write_error;          /* errno of the last failed write, 0: none */
  int logged_error;         /* ...the one last logged */
} m;

/* Each export carries its own counters, so a reload that adds or drops
 * exports never leaves them behind; an overlay instance counts for the
 * export it overlays.  NULL only when out of memory.  Every loop counts
 * (loops.h): the counters change atomically, and whichever loop comes
 * first makes them. */
static struct export_stats *stats_of(const struct export *exp) {
  struct export *e = exp->base ? exp->base : (struct export *)exp;
  struct export_stats *st = __atomic_load_n(&e->stats, __ATOMIC_ACQUIRE);
  if (st)
    return st;
  struct export_stats *fresh = calloc(1, sizeof *fresh);
  if (!fresh)
    return NULL;
  if (__atomic_compare_exchange_n(&e->stats, &st, fresh, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE))
    return fresh;
  free(fresh);
  return st;
}

#define COUNT(x, n) __atomic_fetch_add(&(x), (n), __ATOMIC_RELAXED)
#define READ(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* The counters of the i-th export, zeros when they cannot be had. */
static const struct export_stats *stats_at(size_t i) {
  static const struct export_stats none;
  const struct export_stats *st = stats_of(m.srv->exports[i]);
  return st ? st : &none;
}

void metrics_export_free(struct export *exp) {
  free(exp->stats);
  exp->stats = NULL;
}

static size_t command_index(uint16_t type) {
  return type <= NBD_CMD_BLOCK_STATUS ? type : N_COMMANDS - 1;
}

static const char *command_label(size_t i) {
  return i < N_COMMANDS - 1 ? nbd_cmd_name((uint16_t)i) : "unknown";
}

static size_t errno_index(uint32_t e) {
  for (size_t i = 0; i < N_ERRNOS - 1; i++)
    if (errnos[i].value == e)
      return i;
  return N_ERRNOS - 1;
}

static const char *errno_label(size_t i) { return i < N_ERRNOS - 1 ? errnos[i].name : "other"; }

void metrics_request_begin(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->inflight, 1);
}

void metrics_request_end(const struct export *exp, uint16_t type, uint32_t nbd_error,
                         uint64_t length, uint64_t latency_ns, bool replied) {
  struct export_stats *st = stats_of(exp);
  if (!st)
    return;
  __atomic_fetch_sub(&st->inflight, 1, __ATOMIC_RELAXED);
  if (!replied)
    return;
  size_t c = command_index(type);
  COUNT(st->requests[c][nbd_error ? 1 : 0], 1);
  double s = (double)latency_ns / 1e9;
  size_t b = 0;
  while (b < N_BUCKETS - 1 && s > bucket_le[b])
    b++;
  COUNT(st->latency[c][b], 1);
  COUNT(st->latency_ns[c], latency_ns);
  if (nbd_error) {
    COUNT(st->errors[errno_index(nbd_error)], 1);
    return;
  }
  if (type == NBD_CMD_READ)
    COUNT(st->bytes_read, length);
  else if (type == NBD_CMD_WRITE)
    COUNT(st->bytes_written, length);
}

void metrics_request_on_loop(const struct export *exp, uint16_t type) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->on_loop[type == NBD_CMD_WRITE], 1);
}

void metrics_reply_from_worker(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->from_worker, 1);
}

void metrics_read_spliced(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->spliced, 1);
}

void metrics_write_spliced(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->wspliced, 1);
}

void metrics_write_one_lane(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->one_lane, 1);
}

void metrics_write_ahead_pause(const struct export *exp) {
  struct export_stats *st = stats_of(exp);
  if (st)
    COUNT(st->ahead_pauses, 1);
}

void metrics_connection_accepted(void) { m.accepted++; }

void metrics_connection_refused(const char *reason) {
  for (size_t i = 0; i < N_REFUSALS; i++)
    if (strcmp(reason, refusal_reasons[i]) == 0) {
      COUNT(m.refused[i], 1);
      return;
    }
}

/* ---- the text ---- */

/* A label value as the exposition format quotes it. */
static void put_label(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"')
      fprintf(f, "\\%c", *s);
    else if (*s == '\n')
      fputs("\\n", f);
    else
      fputc(*s, f);
  }
}

static void family(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP vhdnbd_%s %s\n# TYPE vhdnbd_%s %s\n", name, help, name, type);
}

static void export_series(FILE *f, const char *name, const struct export *exp) {
  fprintf(f, "vhdnbd_%s{export=\"", name);
  put_label(f, exp->name);
  fputc('"', f);
}

/* A family with one series per export, each the export's counter at byte
 * offset field of struct export_stats. */
static void export_family(FILE *f, const char *name, const char *type, const char *help,
                          size_t field) {
  family(f, name, type, help);
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    export_series(f, name, m.srv->exports[i]);
    fprintf(f, "} %" PRIu64 "\n", READ(*(const uint64_t *)((const char *)stats_at(i) + field)));
  }
}

static unsigned export_connections(const struct export *exp) {
  unsigned n = 0;
  for (const struct connection *c = loops_main()->conns; c; c = c->next)
    if (c->exp == exp && !c->closing)
      n++;
  /* Those other loops serve count until they are gone (only exp is read). */
  for (const struct connection *c = m.srv->moved; c; c = c->moved_next)
    if (c->exp == exp)
      n++;
  return n;
}

static void sum_stats(struct export_stats *t) {
  memset(t, 0, sizeof *t);
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    const struct export_stats *st = stats_of(m.srv->exports[i]);
    if (!st)
      continue;
    for (size_t c = 0; c < N_COMMANDS; c++) {
      t->requests[c][0] += READ(st->requests[c][0]);
      t->requests[c][1] += READ(st->requests[c][1]);
    }
    for (size_t e = 0; e < N_ERRNOS; e++)
      t->errors[e] += READ(st->errors[e]);
    t->bytes_read += READ(st->bytes_read);
    t->bytes_written += READ(st->bytes_written);
    t->on_loop[0] += READ(st->on_loop[0]);
    t->on_loop[1] += READ(st->on_loop[1]);
    t->from_worker += READ(st->from_worker);
    t->spliced += READ(st->spliced);
    t->wspliced += READ(st->wspliced);
    t->one_lane += READ(st->one_lane);
    t->ahead_pauses += READ(st->ahead_pauses);
    t->inflight += READ(st->inflight);
  }
}

static void write_requests(FILE *f) {
  family(f, "requests_total", "counter", "NBD requests answered, by export, command and result.");
  for (size_t i = 0; i < m.srv->n_exports; i++)
    for (size_t c = 0; c < N_COMMANDS; c++)
      for (int r = 0; r < 2; r++) {
        export_series(f, "requests_total", m.srv->exports[i]);
        fprintf(f, ",command=\"%s\",result=\"%s\"} %" PRIu64 "\n", command_label(c),
                r ? "error" : "ok", stats_at(i)->requests[c][r]);
      }
  family(f, "errors_total", "counter", "NBD error replies, by export and error.");
  for (size_t i = 0; i < m.srv->n_exports; i++)
    for (size_t e = 0; e < N_ERRNOS; e++) {
      export_series(f, "errors_total", m.srv->exports[i]);
      fprintf(f, ",errno=\"%s\"} %" PRIu64 "\n", errno_label(e), stats_at(i)->errors[e]);
    }
  export_family(f, "read_bytes_total", "counter", "Bytes returned by successful READs.",
                offsetof(struct export_stats, bytes_read));
  export_family(f, "written_bytes_total", "counter", "Bytes stored by successful WRITEs.",
                offsetof(struct export_stats, bytes_written));
  family(f, "requests_on_loop_total", "counter",
         "READs and WRITEs the event loop served itself, with no worker thread.");
  for (size_t i = 0; i < m.srv->n_exports; i++)
    for (int w = 0; w < 2; w++) {
      export_series(f, "requests_on_loop_total", m.srv->exports[i]);
      fprintf(f, ",command=\"%s\"} %" PRIu64 "\n", w ? "WRITE" : "READ",
              stats_at(i)->on_loop[w]);
    }
  export_family(f, "replies_from_workers_total", "counter",
                "Replies a worker thread sent itself, with no trip through the event loop.",
                offsetof(struct export_stats, from_worker));
  export_family(f, "reads_spliced_total", "counter",
                "READ replies whose data went from the page cache into the socket by splice, "
                "never copied through the server.",
                offsetof(struct export_stats, spliced));
  export_family(f, "writes_spliced_total", "counter",
                "WRITEs whose payload went from the socket into the file by splice, never copied "
                "through the server.",
                offsetof(struct export_stats, wspliced));
  export_family(f, "writes_one_lane_total", "counter",
                "Plain WRITEs run on one lane, not spread over all, because the recent ones held "
                "the file long.",
                offsetof(struct export_stats, one_lane));
  export_family(f, "write_ahead_pauses_total", "counter",
                "Times a client's requests were left unread because WRITE payloads it had sent "
                "were still waiting to be stored and answered (2 MiB of them): it writes faster "
                "than the disk.",
                offsetof(struct export_stats, ahead_pauses));
  export_family(f, "requests_in_flight", "gauge", "Requests received and not yet answered.",
                offsetof(struct export_stats, inflight));
  family(f, "requests_queued", "gauge",
         "Requests waiting in the export's queue for earlier conflicting ones.");
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    export_series(f, "requests_queued", m.srv->exports[i]);
    fprintf(f, "} %u\n", queue_waiting(&m.srv->exports[i]->queue));
  }
  family(f, "export_connections", "gauge", "Connections in transmission with the export.");
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    export_series(f, "export_connections", m.srv->exports[i]);
    fprintf(f, "} %u\n", export_connections(m.srv->exports[i]));
  }
}

static void write_latency(FILE *f) {
  family(f, "request_duration_seconds", "histogram",
         "Time from a request's header to its reply written, by export and command.");
  for (size_t i = 0; i < m.srv->n_exports; i++)
    for (size_t c = 0; c < N_COMMANDS - 1; c++) {
      const struct export_stats *st = stats_at(i);
      uint64_t cum = 0;
      for (size_t b = 0; b < N_BUCKETS; b++) {
        cum += READ(st->latency[c][b]);
        export_series(f, "request_duration_seconds_bucket", m.srv->exports[i]);
        if (b < N_BUCKETS - 1)
          fprintf(f, ",command=\"%s\",le=\"%g\"} %" PRIu64 "\n", command_label(c), bucket_le[b],
                  cum);
        else
          fprintf(f, ",command=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", command_label(c), cum);
      }
      export_series(f, "request_duration_seconds_sum", m.srv->exports[i]);
      fprintf(f, ",command=\"%s\"} %.9f\n", command_label(c),
              (double)READ(st->latency_ns[c]) / 1e9);
      export_series(f, "request_duration_seconds_count", m.srv->exports[i]);
      fprintf(f, ",command=\"%s\"} %" PRIu64 "\n", command_label(c), cum);
    }
}

/* Server-wide: the sums over exports, and the connections. */
static void write_server(FILE *f) {
  struct export_stats t;
  sum_stats(&t);
  family(f, "server_requests_total", "counter", "NBD requests answered, all exports.");
  for (size_t c = 0; c < N_COMMANDS; c++)
    for (int r = 0; r < 2; r++)
      fprintf(f, "vhdnbd_server_requests_total{command=\"%s\",result=\"%s\"} %" PRIu64 "\n",
              command_label(c), r ? "error" : "ok", t.requests[c][r]);
  family(f, "server_errors_total", "counter", "NBD error replies, all exports.");
  for (size_t e = 0; e < N_ERRNOS; e++)
    fprintf(f, "vhdnbd_server_errors_total{errno=\"%s\"} %" PRIu64 "\n", errno_label(e),
            t.errors[e]);
  family(f, "server_read_bytes_total", "counter", "Bytes returned by READs, all exports.");
  fprintf(f, "vhdnbd_server_read_bytes_total %" PRIu64 "\n", t.bytes_read);
  family(f, "server_written_bytes_total", "counter", "Bytes stored by WRITEs, all exports.");
  fprintf(f, "vhdnbd_server_written_bytes_total %" PRIu64 "\n", t.bytes_written);
  family(f, "server_requests_on_loop_total", "counter",
         "READs and WRITEs the event loop served itself, all exports.");
  for (int w = 0; w < 2; w++)
    fprintf(f, "vhdnbd_server_requests_on_loop_total{command=\"%s\"} %" PRIu64 "\n",
            w ? "WRITE" : "READ", t.on_loop[w]);
  family(f, "server_replies_from_workers_total", "counter",
         "Replies worker threads sent themselves, all exports.");
  fprintf(f, "vhdnbd_server_replies_from_workers_total %" PRIu64 "\n", t.from_worker);
  family(f, "server_reads_spliced_total", "counter",
         "READ replies whose data was spliced into the socket, all exports.");
  fprintf(f, "vhdnbd_server_reads_spliced_total %" PRIu64 "\n", t.spliced);
  family(f, "server_writes_spliced_total", "counter",
         "WRITEs whose payload was spliced into the file, all exports.");
  fprintf(f, "vhdnbd_server_writes_spliced_total %" PRIu64 "\n", t.wspliced);
  family(f, "server_writes_one_lane_total", "counter",
         "Plain WRITEs run on one lane because the recent ones held the file long, all "
         "exports.");
  fprintf(f, "vhdnbd_server_writes_one_lane_total %" PRIu64 "\n", t.one_lane);
  family(f, "server_write_ahead_pauses_total", "counter",
         "Times a client's requests were left unread while its WRITE payloads waited to be "
         "stored, all exports.");
  fprintf(f, "vhdnbd_server_write_ahead_pauses_total %" PRIu64 "\n", t.ahead_pauses);
  family(f, "server_requests_in_flight", "gauge", "Requests not yet answered, all exports.");
  fprintf(f, "vhdnbd_server_requests_in_flight %" PRIu64 "\n", t.inflight);
  unsigned queued = 0;
  for (size_t i = 0; i < m.srv->n_exports; i++)
    queued += queue_waiting(&m.srv->exports[i]->queue);
  family(f, "server_requests_queued", "gauge", "Requests waiting in a queue, all exports.");
  fprintf(f, "vhdnbd_server_requests_queued %u\n", queued);
  family(f, "connections", "gauge", "Client connections open, negotiating or not.");
  fprintf(f, "vhdnbd_connections %u\n", m.srv->n_conns);
  family(f, "connections_total", "counter", "Client connections accepted.");
  fprintf(f, "vhdnbd_connections_total %" PRIu64 "\n", READ(m.accepted));
  family(f, "connections_refused_total", "counter",
         "Connections refused or closed by the server's limits, by reason.");
  for (size_t i = 0; i < N_REFUSALS; i++)
    fprintf(f, "vhdnbd_connections_refused_total{reason=\"%s\"} %" PRIu64 "\n",
            refusal_reasons[i], READ(m.refused[i]));
}

static char *build_text(size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f)
    return NULL;
  write_requests(f);
  write_latency(f);
  write_server(f);
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

/* ---- the file (worker thread) ---- */

static int write_all(int fd, const char *p, size_t len) {
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Allocated bytes per image, from the engine's memory (no disk I/O; see
 * metrics_write). */
static char *allocation_text(size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f)
    return NULL;
  family(f, "allocated_bytes", "gauge",
         "Bytes of the export's image file holding blocks (fixed: the whole disk).");
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    const struct export *exp = m.srv->exports[i];
    struct vhd_info info;
    vhd_get_info(exp->vhd, &info);
    uint64_t bytes = info.type == VHD_TYPE_FIXED
                         ? info.virtual_size
                         : (uint64_t)info.allocated_blocks * info.block_size;
    export_series(f, "allocated_bytes", exp);
    fprintf(f, "} %" PRIu64 "\n", bytes);
  }
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void metrics_write_run(struct work_item *w) {
  const char *path = m.srv->cfg->metrics_file;
  CLEANUP_FREE char *tmp = NULL;
  if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
    tmp = NULL;
    m.write_error = ENOMEM;
    return;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    m.write_error = errno;
    return;
  }
  int r = write_all(fd, m.text, m.text_len);
  if (close(fd) < 0 && r == 0)
    r = -errno;
  /* rename() replaces the old file in one step: a reader opens either. */
  if (r == 0 && rename(tmp, path) < 0)
    r = -errno;
  if (r < 0)
    unlink(tmp);
  m.write_error = -r;
}

static void metrics_write_done(struct work_item *w) {
  free(m.text);
  m.text = NULL;
  m.writing = false;
  if (m.write_error && m.write_error != m.logged_error)
    log_msg(LOG_LEVEL_ERR, "--metrics-file %s: %s", m.srv->cfg->metrics_file,
            strerror(m.write_error));
  else if (!m.write_error && m.logged_error)
    log_msg(LOG_LEVEL_NOTICE, "--metrics-file %s: written again", m.srv->cfg->metrics_file);
  m.logged_error = m.write_error;
}

static void metrics_write(void) {
  if (m.writing)
    return;
  /* Built here, on the loop: a reload may swap the exports (and close
   * their images) at any time between two loop iterations, never during
   * one.  The allocation figures come from memory, no disk I/O. */
  size_t main_len = 0, alen = 0;
  CLEANUP_FREE char *main_text = build_text(&main_len);
  CLEANUP_FREE char *alloc = allocation_text(&alen);
  m.text = main_text && alloc ? malloc(main_len + alen + 1) : NULL;
  if (m.text) {
    memcpy(m.text, main_text, main_len);
    memcpy(m.text + main_len, alloc, alen);
    m.text_len = main_len + alen;
  }
  if (!m.text) {
    log_msg(LOG_LEVEL_ERR, "--metrics-file: out of memory");
    return;
  }
  m.writing = true;
  m.work = (struct work_item){.run = metrics_write_run, .done = metrics_write_done};
  workers_submit(&m.work);
}

static void on_tick(uv_timer_t *t) { metrics_write(); }

/* ---- SIGUSR1 ---- */

static void on_sigusr1(uv_signal_t *h, int signum) {
  for (size_t i = 0; i < m.srv->n_exports; i++) {
    const struct export_stats *st = stats_at(i);
    uint64_t ok = 0, err = 0;
    for (size_t c = 0; c < N_COMMANDS; c++) {
      ok += READ(st->requests[c][0]);
      err += READ(st->requests[c][1]);
    }
    log_msg(LOG_LEVEL_NOTICE,
            "export '%s': %" PRIu64 " requests, %" PRIu64 " failed; %" PRIu64
            " bytes read, %" PRIu64 " bytes written; %" PRIu64 " in flight, %u queued; "
            "%u connections",
            m.srv->exports[i]->name, ok + err, err, READ(st->bytes_read), READ(st->bytes_written),
            READ(st->inflight), queue_waiting(&m.srv->exports[i]->queue),
            export_connections(m.srv->exports[i]));
  }
}

int metrics_start(struct server *srv) {
  m.srv = srv;
  uv_signal_init(srv->loop, &m.sigusr1);
  uv_signal_start(&m.sigusr1, on_sigusr1, SIGUSR1);
  uv_unref((uv_handle_t *)&m.sigusr1);
  uv_timer_init(srv->loop, &m.timer);
  m.started = true;
  if (srv->cfg->metrics_file) {
    uint64_t ms = (uint64_t)srv->cfg->metrics_interval * 1000;
    uv_timer_start(&m.timer, on_tick, ms, ms);
    uv_unref((uv_handle_t *)&m.timer);
    m.timer_started = true;
    metrics_write();
  }
  return 0;
}

void metrics_stop(void) {
  if (!m.started)
    return;
  m.started = false;
  /* The last figures, once every client is gone. */
  if (m.timer_started)
    metrics_write();
  if (!uv_is_closing((uv_handle_t *)&m.timer))
    uv_close((uv_handle_t *)&m.timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&m.sigusr1))
    uv_close((uv_handle_t *)&m.sigusr1, NULL);
}

void metrics_free(void) {}
