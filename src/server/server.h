/* server.h: the server's internal objects and how the files divide the work.
 *
 *   main.c         command line, startup, shutdown
 *   config.c       the INI configuration file
 *   check-config.c --check-config: the settings and images checked, nothing served
 *   exports.c      the export table: one shared vhd_t and queue per export
 *   listen.c       TCP, Unix and systemd-activated sockets, --stdio
 *   connection.c   one client's lifetime: accept, peer identity, timeouts,
 *                  reject, a close that waits for what is outstanding
 *   conn-input.c   its input: staging, framing (conn_expect), the budgets
 *   conn-tls.c     its TLS session after STARTTLS
 *   conn-output.c  its output: replies batched per loop iteration
 *                  (conn_flush_all)
 *                  (the four share conn-internal.h)
 *   handshake.c    fixed newstyle option haggling
 *   transmission.c requests: validation, dispatch, replies
 *   ops.c          the image I/O (the only vhd_* I/O calls): on worker threads,
 *                  and cached READs and WRITEs the kernel takes at once on
 *                  the loop thread without waiting
 *   queue.c        orders conflicting requests per export (see queue.h)
 *   workers.c      the worker threads (see workers.h)
 *   bufpool.c      reuse of large payload buffers (see bufpool.h)
 *   metrics.c      counters, --metrics-file and the SIGUSR1 summary (metrics.h)
 *   guard.c        per-address and negotiation caps at accept, stalled
 *                  payloads, the once-a-second summary of dropped clients
 *   notify.c       sd_notify and the pidfile
 *   overlay.c      per-client copy-on-write children of an export's image
 *   reload.c       SIGHUP: the configuration file read again, exports swapped
 *   loops.c        the event loops: the main one, and --loops more that serve
 *                  plain clients' transmission phase (see loops.h)
 *
 * Everything except ops_run (ops.c) runs on a loop thread: a connection's
 * business on the loop that serves it (conn->loop), everything else on the
 * main loop.
 */
#ifndef VHDNBD_SERVER_H
#define VHDNBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>
#include <stdatomic.h>

#include <uv.h>

#include "acl.h"
#include "codec.h"
#include "lanes.h"
#include "loops.h"
#include "queue.h"
#include "tls.h"
#include "vhd.h"
#include "workers.h"

/* Limits (see the hostile-client notes in the protocol reference). */
#define SERVER_MAX_PAYLOAD (32u * 1024 * 1024)       /* advertised maximum READ/WRITE */
#define SERVER_ABSURD_PAYLOAD (64u * 1024 * 1024)    /* WRITE above this: close */
#define SERVER_MAX_INFLIGHT_BYTES (64u * 1024 * 1024) /* stop reading the socket above */
#define SERVER_MAX_INFLIGHT_REQUESTS 512u
/* WRITE payloads a connection holds in memory (from their header until
 * their reply is written), above which it reads no further request: two
 * payloads of 1 MiB.
 * A worker writes one while the loop reads the next, which is all the
 * overlap there is to have (long writes run on one write lane), and the
 * buffers then cycle hot in the CPUs' caches; reading sixteen ahead only
 * copied each payload through cold memory twice (bench/RESULTS.md,
 * "Payloads read ahead of the writes").  4 KiB writes stay under it at
 * any depth SERVER_MAX_INFLIGHT_REQUESTS allows. */
#define SERVER_WRITE_AHEAD_BYTES (2u * 1024 * 1024)
/* All connections together.  A connection with nothing in flight may always
 * read one request, so the memory held is at most this plus one request per
 * connection: a READ slice, or a WRITE payload still arriving. */
#define SERVER_DEFAULT_MAX_INFLIGHT (128ull * 1024 * 1024)
/* READs larger than this are produced and sent a slice at a time, each
 * slice once the previous one was written: a client that does not read its
 * replies holds one slice, not the whole range.  WRITE payloads are counted
 * against the budgets a step at a time as they arrive. */
#define SERVER_READ_SLICE (1024u * 1024)
#define SERVER_PAYLOAD_STEP (1024u * 1024)
#define SERVER_OPTION_MAX (64u * 1024)                /* option data read and parsed */
#define SERVER_OPTION_DISCARD_MAX (1024u * 1024)      /* above: close, else ERR_TOO_BIG */
#define SERVER_OPTION_COUNT_BASE 256u                 /* plus 2 per export */
#define SERVER_DEFAULT_HANDSHAKE_TIMEOUT 10           /* seconds */
#define SERVER_DEFAULT_MAX_CONNECTIONS 128
/* Derived from --max-connections unless set: both a quarter of it. */
#define SERVER_DERIVED UINT32_MAX
#define SERVER_DEFAULT_PAYLOAD_TIMEOUT 30             /* seconds */
#define SERVER_DEFAULT_THREADS 8u /* image I/O that waits for the disk runs in parallel */
#define SERVER_MAX_THREADS 1024u
/* Plain WRITEs of one export run on at most this many lanes at once. */
#define SERVER_MAX_WRITE_LANES 16u
#define SERVER_INBUF_SIZE (64u * 1024)
/* READs of cached data up to this size are served on the loop thread, up to
 * SERVER_INLINE_BUDGET bytes per loop iteration: copying 4 MiB holds up the
 * other clients for about a millisecond at most.  (1 MiB sequential reads
 * at QD16 measured 3.0-3.7 GB/s this way, 1.3-2.9 GB/s through the workers.) */
#define SERVER_INLINE_READ_MAX (1024u * 1024)
/* The same for plain WRITEs the engine can store without waiting (the
 * budget is shared: it bounds the bytes copied on the loop either way). */
#define SERVER_INLINE_WRITE_MAX (1024u * 1024)
#define SERVER_INLINE_BUDGET (4u * 1024 * 1024)
/* READs of at least this many bytes (one slice at most) whose range is one
 * run of one file's data are spliced (splice.h) by a worker rather than
 * copied, twice, on the loop: the page-cache copy into our buffer and the
 * copy into the socket were most of the server's CPU for large reads.
 * Below this size the worker's thread hop costs more than the copies save
 * (64 KiB at QD16: 36-42k spliced against 57-58k copied over TCP, 54-58k
 * against 60-61k over a Unix socket; 128 KiB: 22-28k against 20-21k and
 * 35-37k against 24-27k). */
#define SERVER_SPLICE_MIN (128u * 1024)
/* A READ a worker served (it waited for the disk) up to this size, and not
 * one that may be spliced (SERVER_SPLICE_MIN and more, unless --no-splice),
 * has its reply sent by that worker when it is the connection's only
 * request (as short replies are): no hand-off back to the loop.  Larger
 * ones are spliced, or streamed in slices by the loop. */
#define SERVER_DIRECT_READ_MAX SERVER_SPLICE_MIN
#define SERVER_SHUTDOWN_GRACE_MS 10000
#define SERVER_LINGER_MS 1000
#define SERVER_LINGER_MAX_BYTES (1024u * 1024)
#define SERVER_BLOCK_MIN 1u
#define SERVER_BLOCK_PREFERRED 4096u
#define SERVER_META_CONTEXT_ID 1u /* id of base:allocation */
#define SERVER_META_DEPTH_ID 2u   /* id of qemu:allocation-depth */

enum overlay_mode { OVERLAY_OFF, OVERLAY_DISCARD, OVERLAY_PERSISTENT };
enum overlay_key { OVERLAY_KEY_IDENTITY, OVERLAY_KEY_ADDRESS };

struct overlay_settings {
  enum overlay_mode mode;
  enum overlay_key key;
  char *dir;    /* NULL: overlay_default_dir() */
  uint64_t max; /* bytes per child file; 0: no cap */
};

struct overlay_waiter;

/* A configured export, or (base != NULL) one open overlay child of one:
 * connections to an overlay export are served by such an instance, which
 * has its own image, queue and write serial and shares the base's name. */
struct export {
  char *name;
  char *image;
  char *description; /* may be NULL */
  bool readonly;
  vhd_t *vhd;
  uint64_t size;
  struct queue queue;
  struct acl allow; /* empty: everyone the global list lets in */
  /* Plain WRITEs, one at a time per lane (see export_write_lane). */
  struct work_serial write_lanes[SERVER_MAX_WRITE_LANES];
  uint32_t lane_shift;   /* log2 of the bytes that share a lane (export_set_lanes) */
  struct lane_policy lanes; /* all lanes or one, from how long writes take */
  bool write_error_logged; /* the image's write error was logged (atomic) */
  /* ENOSPC replies are logged at most once an interval (transmission.c):
   * when the next may be (CLOCK_MONOTONIC ns, 0: none yet), and how many
   * went unlogged since the last (both atomic). */
  int64_t enospc_log_next;
  uint64_t enospc_unlogged;
  struct overlay_settings overlay;
  unsigned refs;         /* connections (and, for a base, instances) using it */
  struct export *base;   /* instance: the export it overlays (holds a ref) */
  struct export_stats *stats; /* metrics.c's counters (a base's count its instances) */
  struct export *instances; /* base: its open instances; instance: the next one */
  char *key;             /* persistent instance: what it is keyed on */
  char *child;           /* instance: the child image's path */
  /* persistent instance keyed on an IPv4-mapped address: the child's path
   * under the key older versions used (overlay.c), or NULL */
  char *legacy_child;
  int state;             /* instance: see overlay.c */
  struct overlay_waiter *waiters; /* instance: connections waiting for it */
  bool retired;          /* out of the table after a reload: close once unused */
  /* overlay base: what its image and each of the image's parents were
   * when opened (size, modification time), recorded beside each
   * persistent child (overlay.c); base_stamp_top: the image's lines alone,
   * all an older vhdnbd recorded */
  char *base_stamp;
  char *base_stamp_top;
};

struct export_spec {
  char *name, *image, *description;
  char *origin; /* "FILE:LINE" of its [export] section; NULL: the command line */
  bool readonly, readonly_set;
  struct acl allow;
  struct overlay_settings overlay;
};

enum tls_mode { TLS_OFF, TLS_ON, TLS_REQUIRE };

/* Settings from the command line and the configuration file. */
struct settings {
  char *port;      /* NULL: default */
  char **binds;    /* addresses to bind TCP to; none: all */
  size_t n_binds;
  char *unix_path;
  bool readonly;
  bool stdio;
  unsigned max_connections;
  unsigned max_handshakes;    /* connections negotiating; 0 = no limit */
  unsigned max_connections_per_address; /* TCP, per client address; 0 = no limit */
  unsigned handshake_timeout; /* seconds; 0 = none */
  unsigned payload_timeout;   /* seconds without WRITE payload bytes; 0 = none */
  unsigned idle_timeout;      /* seconds without requests; 0 = none */
  uint64_t max_inflight;      /* bytes buffered for all connections together */
  unsigned threads;           /* worker threads */
  unsigned loops;             /* event loops, the main one included */
  unsigned write_lanes;       /* plain WRITEs in parallel per export; 0: derived */
  char *pidfile;
  char *metrics_file;         /* Prometheus text file; NULL: none */
  unsigned metrics_interval;  /* seconds between its rewrites */
  int verbose;                /* -v count minus -q count */
  struct export_spec *exports;
  size_t n_exports;
  struct acl allow;           /* clients refused at accept unless listed */
  enum tls_mode tls;
  bool tls_set;
  char *tls_certificates;     /* directory */
  char *tls_psk;              /* psktool key file */
  bool tls_verify_peer;
  bool no_splice; /* READs always copied (--no-splice, splice = no) */
  bool sparse_blocks; /* new blocks' space not reserved (--sparse-blocks) */
};

struct connection;
struct request;

struct server {
  uv_loop_t *loop;
  struct settings *cfg;
  struct export **exports;
  size_t n_exports;
  /* Connections another loop serves (linked by moved_next; main loop
   * only): for the counts of the guard and metrics, which read nothing of
   * them but addr and exp. */
  struct connection *moved;
  unsigned n_conns;         /* every connection, whichever loop has it */
  uint64_t next_conn_id;
  bool shutting_down;
  bool stdio_done;
  struct tls_creds *tls; /* NULL: --tls=off */
  bool loop_writes;             /* WRITEs may be served on the loop (ops_write_now) */
  bool direct_replies;          /* workers may send short replies (conn_send_direct) */
  bool splice_reads;            /* large READs spliced from the page cache (splice.h) */
  bool splice_writes;           /* large WRITE payloads spliced into the file */
  unsigned write_lanes;         /* lanes per export for plain WRITEs, fixed at startup */
  bool adaptive_lanes;          /* narrowed to one while writes are long (lanes.h) */
  unsigned vhd_open_flags;      /* VHD_OPEN_SPARSE_BLOCKS or 0, fixed at startup */
  bool overlay_close_failed;    /* a persistent child's final flush failed: exit 1 */
};

extern struct server server;

/* config.c */
int config_load(const char *path, struct settings *s);
int parse_bool(const char *v, bool *out);
int parse_tls_mode(const char *v, enum tls_mode *out);
void settings_free(struct settings *s);
int settings_add_export(struct settings *s, const char *name, const char *image,
                        const char *description, bool readonly, bool readonly_set,
                        const char *origin);

/* check-config.c: checks the TLS credentials and opens every export's image
 * (read-only, no lock), printing one line per export; errors: how many
 * problems the settings already showed.  Returns the exit status: 0 or 1. */
int config_check(const struct settings *s, unsigned errors);
/* One export's part of it: 0, or 1 after logging the problem; prints the
 * export's line only when print is set.  Any thread. */
unsigned config_check_export(const struct settings *s, const struct export_spec *sp,
                             bool print);

/* exports.c */
int exports_open(struct server *srv, const struct settings *s);
/* Opens one export's image (logging why not); any thread. */
int export_open(const struct settings *s, const struct export_spec *sp, struct export **out);
/* Flushes and closes its image and frees it (logging a failure); any thread. */
int export_close(struct export *e);
/* Flushes and closes every image; returns the last error. */
int exports_close(struct server *srv);
struct export *exports_find(struct server *srv, const char *name, size_t len);
/* Whether the export's allow list admits the connection's peer now
 * (ACL_AFTER_TLS: it may, once the client has negotiated TLS). */
enum acl_verdict export_access(const struct export *exp, const struct connection *conn);
bool export_allows(const struct export *exp, const struct connection *conn);
uint16_t export_tflags(const struct export *exp, bool structured);
/* The lane a plain WRITE at off runs on (see transmission.c, start_work). */
struct work_serial *export_write_lane(struct export *exp, uint64_t off);
/* Sizes the lanes' regions for exp->vhd, once it is open (before any I/O:
 * the engine's fields are read without its lock), and sets whether they
 * may narrow to one. */
void export_set_lanes(struct export *exp);
/* Drops a reference taken by a connection or an overlay instance (an
 * instance's own: see overlay_release). */
void export_put(struct export *exp);

/* overlay.c */
int parse_overlay_mode(const char *v, enum overlay_mode *out);
int parse_overlay_key(const char *v, enum overlay_key *out);
const char *overlay_mode_name(enum overlay_mode m);
/* Where children live unless overlay-dir says: "overlays" under
 * $STATE_DIRECTORY, else under the package's state directory. */
const char *overlay_default_dir(void);
typedef void (*overlay_attach_cb)(struct connection *conn, struct export *inst, int err,
                                  const char *name, void *opaque);
/* Finds or opens the instance of overlay export exp for conn.  Returns
 * -EACCES at once (with a reason in why) when conn has no key; otherwise 0,
 * and cb runs later on the loop thread with the instance (holding a
 * reference for conn) or an error (inst NULL; -ESTALE: the image changed
 * under a persistent child), and the export's name.  cb does not run when
 * conn closed meanwhile. */
int overlay_attach(struct connection *conn, struct export *exp, overlay_attach_cb cb,
                   void *opaque, const char **why);
/* The check overlay_attach makes first, alone: -EACCES (with why) when exp
 * keeps a persistent child per client and conn has no key, so NBD_OPT_INFO
 * answers as NBD_OPT_GO would; else 0 (-ENOMEM). */
int overlay_key_check(const struct connection *conn, const struct export *exp, const char **why);
/* Drops an instance's reference; the last one closes the child on a worker
 * thread (a discarded child is gone with it). */
void overlay_release(struct export *inst);

/* reload.c */
void reload_start(struct server *srv);
/* A retired export's last reference went: its image is closed. */
void reload_retired_unused(struct export *e);
/* Whether conn's export was removed by a reload (any loop). */
bool reload_conn_uses_retired(const struct connection *c);

/* listen.c */
int listen_start(struct server *srv);
void listen_stop(struct server *srv);
void listen_cleanup(struct server *srv);

/* connection.c, conn-input.c, conn-tls.c, conn-output.c (used by
 * handshake.c and transmission.c) */
enum conn_phase { PHASE_HANDSHAKE, PHASE_TRANSMISSION };

typedef void (*conn_input_cb)(struct connection *conn);

struct connection {
  struct connection *prev, *next; /* on its loop's list */
  struct loop *loop;    /* the loop serving it (loops.h) */
  /* Moving to another loop (conn_move): input stopped, waiting for its
   * output to be written out; the main loop's moved list; the message
   * that carries it there, and later tells the main loop it is gone. */
  struct loop *move_to;
  unsigned move_handles; /* handles still closing before the move */
  struct connection *moved_prev, *moved_next;
  struct loop_msg msg;
  int move_fd;          /* the socket, duplicated for the loop it moves to */
  struct loop *serving_loop; /* counted in its serving (loops_pick) */
  uint64_t id;
  char peer[128];
  struct sockaddr_storage addr; /* TCP peers; ss_family AF_UNSPEC otherwise */
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;
  uv_pipe_t out_pipe;   /* --stdio only: stdout */
  uv_stream_t *out;     /* where replies go: &sock.stream or &out_pipe */
  bool has_out_pipe;
  uv_timer_t timer;     /* handshake timeout, then idle timeout */
  uint64_t last_request; /* uv_now() when the last request header arrived */
  uint64_t last_input;   /* uv_now() when bytes last arrived */
  uint64_t accepted;     /* uv_now() when accepted */
  unsigned refs;        /* open handles + live requests + pending writes */

  /* Input: a staging buffer, and the one thing we are currently reading. */
  uint8_t *inbuf;
  size_t in_start, in_end;
  uint8_t *want_dst;    /* NULL: discard (or into want_pipe_wr) */
  uint64_t want_len, want_done;
  conn_input_cb want_cb;
  /* A payload moved into a pipe (conn_expect_pipe): want_pipe_wr >= 0.
   * The socket's bytes go in by splice(2), made when libuv offers to read
   * (on_alloc) and accounted in on_read (splice_in).  Should the pipe fill
   * up, the bytes move to want_spill and the rest is read there as usual:
   * want_spilled then says so. */
  int want_pipe_rd, want_pipe_wr;
  uint8_t *want_spill;
  uint64_t want_head;   /* bytes copied to want_spill before the pipe had any */
  bool want_spilled;
  bool splice_in_made;  /* on_alloc spliced: on_read accounts splice_in */
  ssize_t splice_in;    /* bytes, 0 at EOF, or a negative errno */
  bool no_splice_in;    /* the socket refused to splice: copy */
  bool is_tcp;
  /* SO_RCVLOWAT asked of a TCP socket while a large payload comes in
   * (conn-input.c); 1, the kernel's default, otherwise. */
  unsigned rcvlowat;
  uint64_t rcvlowat_queued; /* bytes the kernel held when the guard last looked */
  bool reading;         /* uv_read_start active */
  bool in_process;
  bool eof;             /* no more input: EOF, DISC, fatal error or shutdown */
  bool closing;
  bool close_flushing;  /* conn_close is writing out what is queued */
  bool draining;        /* close once writes and requests are done */
  bool lingering;       /* rejected: replies flushed, write side shut, input discarded */
  uint64_t linger_bytes;
  uv_shutdown_t shutdown_req;

  /* Identity, for the allow lists: Unix-socket peer credentials
   * (SO_PEERCRED); dn: and psk: come from the TLS session. */
  bool has_cred;
  uid_t uid;
  gid_t gid;
  bool tls_first;  /* the global allow list needs the TLS identity: only
                      STARTTLS until then */
  bool refused;    /* ...which it did not admit: every option is refused */

  enum conn_phase phase;
  uint8_t hdr[NBD_EXTENDED_REQUEST_SIZE];

  /* handshake */
  uint32_t client_flags;
  unsigned n_options;
  struct nbd_option_hdr opt;
  uint8_t *optbuf;
  bool structured;       /* also set by extended headers, which imply it */
  bool extended;         /* NBD_OPT_EXTENDED_HEADERS: 32-byte requests and replies */
  char *meta_export;     /* export named by the last SET_META_CONTEXT */
  uint32_t meta_export_len;
  bool meta_allocation;  /* ...and whether it selected base:allocation */
  bool meta_depth;       /* ...and qemu:allocation-depth */

  /* TLS (after STARTTLS): ciphertext read lands in tls_in, is fed to the
   * session and decrypted into inbuf; ciphertext to send collects in tls_out. */
  struct tls_session *tls;
  bool tls_handshaking;
  uint8_t *tls_in;
  uint8_t *tls_out;
  size_t tls_out_len, tls_out_cap;
  bool tls_out_failed;
  bool tls_bye_sent;     /* close_notify queued: close once it is written */

  /* transmission */
  struct export *exp;
  struct nbd_request_limits limits;
  struct request *payload_req; /* WRITE whose payload is being read */
  struct request *streaming;   /* sliced READ whose reply is being written */
  struct request *held_head, *held_tail; /* replies waiting for it, in order */
  struct nbd_request discard_req; /* refused WRITE whose payload is being discarded */
  struct nbd_request status_req;  /* BLOCK_STATUS whose payload is being read */
  uint8_t status_payload[NBD_BLOCK_STATUS_PAYLOAD_MAX];
  uint32_t discard_error;
  const char *discard_why;
  unsigned inflight;
  uint64_t inflight_bytes;
  uint64_t write_ahead;  /* WRITE payload bytes held (SERVER_WRITE_AHEAD_BYTES) */
  bool write_ahead_paused; /* input stopped at that cap (counted once a pause) */
  uint64_t write_bytes;  /* queued on the socket, not yet written */
  conn_input_cb tls_done_cb;
  unsigned writes_pending;
  /* Direct replies (conn_send_direct): a worker may write a short reply
   * straight to the socket while the loop has nothing queued, nothing being
   * written and no reply half-sent.  direct_ok and direct_held change under
   * direct_lock; only the loop sets direct_ok, and it clears it (under the
   * lock, so no worker is mid-write) before it writes anything itself. */
  pthread_mutex_t direct_lock;
  int direct_fd;         /* the socket; -1: never (TLS, --stdio) */
  bool direct_ok;
  bool direct_held;      /* a worker's write went out in part: the loop
                            writes nothing before that reply's rest */
  /* Requests whose reply is neither sent nor queued (any thread): a worker
   * sends its own reply only when its request is the one. */
  atomic_uint unanswered;
  /* Spliced READ replies (conn_write_splice) in order; splice_cur is the
   * one being written, and nothing else is written until it is whole. */
  struct splice_out *splice_head, *splice_tail, *splice_cur;
  /* Replies waiting for conn_flush_all (see conn_write). */
  uv_buf_t *outq;
  unsigned outq_nbufs, outq_cap;
  struct write_done *outq_done;
  unsigned outq_n_done, outq_done_cap;
  bool outq_listed;
  struct connection *outq_next;
};

int conn_accept(uv_stream_t *listener, bool is_tcp);
int conn_start_stdio(void);
/* Reads len bytes into dst (NULL: discard them), then calls cb. */
void conn_expect(struct connection *conn, uint8_t *dst, uint64_t len, conn_input_cb cb);
/* Whether input arrived that the low-water mark keeps unread (a large
 * TCP payload still short): the kernel holds more bytes than when this
 * was last asked.  For the stall guard, which counts those as progress. */
bool conn_input_queued_grew(struct connection *conn);
/* Whether conn_expect_pipe may be used: a plain socket (no TLS, not
 * --stdio) that has not refused splice(2), while other connections have
 * bytes in flight, or (a Unix socket) this one has another request
 * outstanding.  Called once the request being read exists. */
bool conn_may_splice_in(const struct connection *conn);
/* The same, with the bytes moved into the empty, non-blocking pipe
 * (pipe_rd, pipe_wr), which holds len bytes in whole pages, by splice(2)
 * (page references where the socket holds its data in pages).  Bytes
 * already read with the header are copied to spill (len bytes) instead:
 * conn->want_head of them, the payload's first.  If the pipe cannot take
 * the rest (the pages the socket hands over may be partly filled), every
 * byte moves to spill and conn->want_spilled is true when cb runs. */
void conn_expect_pipe(struct connection *conn, int pipe_rd, int pipe_wr, uint8_t *spill,
                      uint64_t len, conn_input_cb cb);
/* Queues bufs for writing; cb (may be NULL) runs when written or cancelled, with
 * the status.  Writes go out in call order; the queue is written by
 * conn_flush_all, in the same loop iteration. */
typedef void (*conn_write_cb)(struct connection *conn, void *opaque, int status);
int conn_write(struct connection *conn, const uv_buf_t *bufs, unsigned nbufs, conn_write_cb cb,
               void *opaque);
/* Queues a reply whose data waits in a pipe (splice.h): hdr (copied:
 * the reply's header, and any data bytes that come before the pipe's),
 * then len bytes moved from pipe_rd into the socket by splice(2), as room
 * appears.  Only where the connection has a plain socket (direct_fd).
 * Other replies go before or after it, never inside; cb as for conn_write. */
int conn_write_splice(struct connection *conn, const void *hdr, size_t hdr_len, int pipe_rd,
                      size_t len, conn_write_cb cb, void *opaque);
/* Writes a private copy of data (handshake replies). */
int conn_write_copy(struct connection *conn, const void *data, size_t len);
/* Worker thread.  Writes a reply (a header of at most CONN_DIRECT_MAX
 * bytes, then data_len bytes of data, which may be none) to the socket at
 * once if the connection allows it now (see direct_ok).  Returns the
 * whole length when all of it went out; 0 when none did (the loop then
 * sends it as usual); or the count written, the rest of which the loop
 * must send before anything else (conn_send_rest). */
#define CONN_DIRECT_MAX 40
size_t conn_send_direct(struct connection *conn, const void *hdr, size_t hdr_len,
                        const void *data, size_t data_len);
/* Loop thread: sends the rest of a reply conn_send_direct wrote in part
 * (nbufs buffers, at most 2), ahead of every reply queued since, and lets
 * output go on. */
int conn_send_rest(struct connection *conn, const uv_buf_t *bufs, unsigned nbufs,
                   conn_write_cb cb, void *opaque);
/* A sliced READ's reply is whole (conn->streaming cleared): spliced
 * replies held back meanwhile may go out. */
void conn_stream_done(struct connection *conn);
/* Loop thread: a reply went out without conn_write (conn_send_direct) and
 * its request is freed: input held back for it may go on. */
void conn_reply_sent(struct connection *conn);
/* Loop thread: output is idle (nothing queued or being written, no reply
 * half-sent): workers may write short replies themselves from now on. */
void conn_direct_allow(struct connection *conn);
void conn_close(struct connection *conn, const char *why);
/* Who the client is, as far as known now (see acl.h). */
void conn_identity(const struct connection *conn, struct acl_peer *out);
/* " (uid 0, gid 0)", " (x509 CN=...)", " (PSK identity ...)" or "": for logs. */
const char *conn_describe_identity(const struct connection *conn, char *buf, size_t len);
/* Writes the queued replies of every connection of loop l, each as one write. */
void conn_flush_all(struct loop *l);
/* Main loop, a plain socket's transmission just set up (transmission.c):
 * serves it from loop l from now on (see loops.h).  Its input stops at
 * once; it moves once the replies it has queued are written, and
 * transmission_arrived runs on l's thread. */
void conn_move(struct connection *conn, struct loop *l);
/* Switches the connection to TLS after the STARTTLS ACK was queued: drops any
 * plaintext already buffered and starts the TLS handshake.  When it completes,
 * cb runs (option haggling resumes inside TLS). */
int conn_start_tls(struct connection *conn, conn_input_cb cb);
/* Ends a connection that broke the protocol: stops parsing, lets queued
 * replies go out, shuts the write side and discards input for a short while
 * before closing, so the client sees an orderly EOF rather than a reset. */
void conn_reject(struct connection *conn, const char *why);
/* Stop reading; close once all requests and writes are done. */
void conn_drain(struct connection *conn);
/* Re-evaluates back-pressure and whether a draining connection may close. */
void conn_update(struct connection *conn);
void conn_ref(struct connection *conn);
void conn_unref(struct connection *conn);
void conns_shutdown(struct server *srv, bool force);
/* The accounting of buffered bytes of a connection's loop (see
 * --max-inflight). */
void loop_inflight_add(struct loop *l, uint64_t n);
void loop_inflight_sub(struct loop *l, uint64_t n);

/* guard.c */
/* Admits a new connection, or closes it (and returns -EBUSY) when its address
 * has too many; closes the oldest negotiating connection when too many are. */
int guard_admit(struct connection *conn);
void guard_handshake_timeout(struct connection *conn);
void guard_start(struct server *srv);
void guard_stop(struct server *srv);
/* A loop other than the main one watches its own connections' payloads. */
void guard_loop_start(struct loop *l);
void guard_loop_stop(struct loop *l);

/* handshake.c */
void handshake_start(struct connection *conn);

/* transmission.c */
void transmission_start(struct connection *conn, struct export *exp);
/* On the loop conn moved to: its timer and input go on there. */
void transmission_arrived(struct connection *conn);
/* The transmission flags conn is told for exp (INFO, GO, EXPORT_NAME). */
uint16_t transmission_tflags(const struct connection *conn, const struct export *exp);
/* Frees what the connection's requests hold that no completion will free: a
 * WRITE whose payload was still arriving, replies held behind a sliced READ. */
void transmission_abort_payload(struct connection *conn);
/* Whether a WRITE payload is being read (or discarded). */
bool transmission_payload_pending(const struct connection *conn);
/* Logs how many of exp's ENOSPC failures the rate limit left out of the
 * log since its last line, if any: when exp closes, so that each is
 * counted once.  child names an overlay instance's file (NULL: none). */
void transmission_log_unlogged_enospc(struct export *exp, const char *child);

/* notify.c */
void notify_ready(void);
void notify_stopping(void);
void notify_reloading(void);
int pidfile_write(const char *path);
void pidfile_remove(const char *path);

/* main.c */
void server_check_done(struct server *srv);
/* Parses the command line given at startup again, with the configuration
 * file as it is now, into s; returns how many problems were reported
 * (each logged).  Safe on a worker thread while the loop runs. */
unsigned settings_reparse(struct settings *s);
/* The -C file, or NULL. */
const char *settings_config_path(void);

#endif
