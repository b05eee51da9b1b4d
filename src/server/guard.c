/* guard.c: defences against clients that hold on to what others need.
 *
 * At accept: a cap on connections per client address, and a cap on
 * connections still negotiating, where the oldest negotiating connection
 * gives way to the new one (a flood of clients that never negotiate then
 * churns among itself instead of locking everyone out until the handshake
 * timeout).  Once a second: WRITE payloads that stopped arriving are cut
 * off, and one line sums up the connections dropped for any of these
 * reasons, so that a flood costs one log line a second, not one per client. */
#include "config.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "same-client.h"
#include "server.h"

#define GUARD_TICK_MS 1000
/* Below --max-connections, only a connection negotiating for this long
 * gives way to a new one: a real client's handshake takes milliseconds, and
 * a burst of them beyond --max-handshakes must not evict itself. */
#define GUARD_EVICT_MIN_MS 1000

enum drop_reason {
  DROP_PER_ADDRESS,
  DROP_MAX_CONNECTIONS,
  DROP_EVICTED,
  DROP_HANDSHAKE_TIMEOUT,
  DROP_PAYLOAD_STALLED,
  DROP_N
};

static const char *const drop_text[DROP_N] = {
    [DROP_PER_ADDRESS] = "over --max-connections-per-address",
    [DROP_MAX_CONNECTIONS] = "over --max-connections",
    [DROP_EVICTED] = "negotiating longest when --max-handshakes or --max-connections was reached",
    [DROP_HANDSHAKE_TIMEOUT] = "past --handshake-timeout",
    [DROP_PAYLOAD_STALLED] = "WRITE payload stalled past --payload-timeout",
};

static uv_timer_t tick;
static bool tick_started;
static atomic_uint drops[DROP_N]; /* any loop drops, the main loop logs */

/* Label values of --metrics-file's vhdnbd_connections_refused_total. */
static const char *const drop_label[DROP_N] = {
    [DROP_PER_ADDRESS] = "per_address",
    [DROP_MAX_CONNECTIONS] = "max_connections",
    [DROP_EVICTED] = "evicted",
    [DROP_HANDSHAKE_TIMEOUT] = "handshake_timeout",
    [DROP_PAYLOAD_STALLED] = "payload_stalled",
};

static void drop(enum drop_reason why) {
  atomic_fetch_add_explicit(&drops[why], 1, memory_order_relaxed);
  metrics_connection_refused(drop_label[why]);
}

static bool live(const struct connection *c) { return !c->closing && !c->lingering; }

int guard_admit(struct connection *conn) {
  const struct settings *s = server.cfg;
  unsigned open = 0, same = 0, negotiating = 0;
  struct connection *oldest = NULL, *oldest_same = NULL;
  /* The list runs newest first, so the last negotiating connection seen is
   * the oldest. */
  for (struct connection *c = loops_main()->conns; c; c = c->next) {
    if (c == conn || !live(c))
      continue;
    open++;
    bool same_addr = conn->addr.ss_family != AF_UNSPEC && same_client((const struct sockaddr *)&c->addr, (const struct sockaddr *)&conn->addr);
    if (same_addr)
      same++;
    if (c->phase == PHASE_HANDSHAKE) {
      negotiating++;
      oldest = c;
      if (same_addr)
        oldest_same = c;
    }
  }
  /* Those other loops serve are in transmission, and counted until
   * they are gone; only their address is read here. */
  for (const struct connection *c = server.moved; c; c = c->moved_next) {
    open++;
    if (conn->addr.ss_family != AF_UNSPEC &&
        same_client((const struct sockaddr *)&c->addr, (const struct sockaddr *)&conn->addr))
      same++;
  }
  /* An address that has connections negotiating gives way with its own
   * oldest: a client reconnecting as fast as it is closed then only churns
   * its own connections, never a newcomer's handshake. */
  if (oldest_same)
    oldest = oldest_same;
  if (s->max_connections_per_address && same >= s->max_connections_per_address) {
    drop(DROP_PER_ADDRESS);
    conn_close(conn, "too many connections from this address");
    return -EBUSY;
  }
  bool full = s->max_connections && open >= s->max_connections;
  if (full && !oldest) {
    drop(DROP_MAX_CONNECTIONS);
    conn_close(conn, "too many connections");
    return -EBUSY;
  }
  bool many = s->max_handshakes && negotiating >= s->max_handshakes && oldest &&
              uv_now(server.loop) - oldest->accepted >= GUARD_EVICT_MIN_MS;
  if (full || many) {
    drop(DROP_EVICTED);
    conn_close(oldest, "evicted: too many connections negotiating");
  }
  return 0;
}

void guard_handshake_timeout(struct connection *conn) {
  drop(DROP_HANDSHAKE_TIMEOUT);
  conn_close(conn, "handshake timeout");
}

/* A payload counts as stalled when no byte of it arrived for the timeout
 * (bytes the kernel holds back for the low-water mark count as arrived):
 * until then it holds a connection slot and the part of the shared budget
 * its bytes have taken. */
static void check_payloads(struct loop *l) {
  unsigned timeout = server.cfg->payload_timeout;
  if (!timeout)
    return;
  uint64_t now = uv_now(l->uv);
  for (struct connection *c = l->conns; c; c = c->next) {
    if (!live(c) || c->phase != PHASE_TRANSMISSION || !transmission_payload_pending(c))
      continue;
    if (conn_input_queued_grew(c))
      c->last_input = now;
    if (now - c->last_input >= (uint64_t)timeout * 1000) {
      drop(DROP_PAYLOAD_STALLED);
      conn_close(c, "WRITE payload stalled (--payload-timeout)");
    }
  }
}

static void log_drops(void) {
  char line[512];
  size_t len = 0;
  for (int i = 0; i < DROP_N; i++) {
    unsigned d = atomic_exchange_explicit(&drops[i], 0, memory_order_relaxed);
    if (!d)
      continue;
    int n = snprintf(line + len, sizeof line - len, "%s%u %s", len ? ", " : "", d,
                     drop_text[i]);
    if (n > 0 && (size_t)n < sizeof line - len)
      len += (size_t)n;
  }
  if (len)
    log_msg(LOG_LEVEL_WARNING, "connections closed in the last second: %s", line);
}

static void on_tick(uv_timer_t *t) {
  check_payloads(loops_main());
  log_drops();
}

static void on_loop_tick(uv_timer_t *t) { check_payloads(t->data); }

void guard_loop_start(struct loop *l) {
  uv_timer_init(l->uv, &l->guard_tick);
  l->guard_tick.data = l;
  uv_timer_start(&l->guard_tick, on_loop_tick, GUARD_TICK_MS, GUARD_TICK_MS);
  uv_unref((uv_handle_t *)&l->guard_tick);
}

void guard_loop_stop(struct loop *l) {
  if (!uv_is_closing((uv_handle_t *)&l->guard_tick))
    uv_close((uv_handle_t *)&l->guard_tick, NULL);
}

void guard_start(struct server *srv) {
  uv_timer_init(srv->loop, &tick);
  uv_timer_start(&tick, on_tick, GUARD_TICK_MS, GUARD_TICK_MS);
  /* Never what keeps the loop alive. */
  uv_unref((uv_handle_t *)&tick);
  tick_started = true;
}

void guard_stop(struct server *srv) {
  if (!tick_started || uv_is_closing((uv_handle_t *)&tick))
    return;
  log_drops();
  uv_close((uv_handle_t *)&tick, NULL);
}
