/* metrics.h: counters of what the server did, written as a Prometheus text
 * file (--metrics-file, for node_exporter's textfile collector) and summed
 * up in the log on SIGUSR1.
 *
 * Every function here runs on the loop thread, which alone updates the
 * counters; the file itself is written by a worker thread from a snapshot,
 * into a temporary file in the same directory renamed over the old one, so
 * a reader never sees half of it. */
#ifndef VHDNBD_METRICS_H
#define VHDNBD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct server;
struct export;

#define METRICS_DEFAULT_INTERVAL 15 /* seconds */

/* Starts the SIGUSR1 handler and,
 * with --metrics-file, writes the file now and every interval.  Returns 0
 * or a negative errno. */
int metrics_start(struct server *srv);
/* Writes the file a last time and closes the handles. */
void metrics_stop(void);
/* Frees what metrics_start set up, once the workers have stopped. */
void metrics_free(void);
/* Frees an export's counters (they live in the export, see stats_of). */
void metrics_export_free(struct export *exp);

/* A request's header arrived / its reply was written (replied) or it was
 * dropped with its connection (not replied). */
void metrics_request_begin(const struct export *exp);
void metrics_request_end(const struct export *exp, uint16_t type, uint32_t nbd_error,
                         uint64_t length, uint64_t latency_ns, bool replied);

/* A READ or WRITE the loop thread served itself (ops_read_now,
 * ops_write_now), counted besides metrics_request_end. */
void metrics_request_on_loop(const struct export *exp, uint16_t type);
/* A reply its worker sent itself (conn_send_direct). */
void metrics_reply_from_worker(const struct export *exp);
/* A READ reply whose data was spliced into the socket (loop thread). */
void metrics_read_spliced(const struct export *exp);
/* A WRITE whose payload was spliced from the socket into the file (loop
 * thread, once it is done). */
void metrics_write_spliced(const struct export *exp);

/* A plain WRITE sent to the export's first lane because the recent ones
 * held the file long (lanes.h; loop thread). */
void metrics_write_one_lane(const struct export *exp);
/* A connection stopped reading at the write-ahead cap (server.h). */
void metrics_write_ahead_pause(const struct export *exp);

/* Connections accepted, and refused or dropped for `reason` (a label
 * value: per_address, max_connections, evicted, handshake_timeout,
 * payload_stalled, not_allowed). */
void metrics_connection_accepted(void);
void metrics_connection_refused(const char *reason);

#endif
