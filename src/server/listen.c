/* listen.c: where connections come from: TCP (IPv4 and IPv6), a Unix socket,
 * sockets passed by systemd (LISTEN_FDS), or one connection on stdin/stdout. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "server.h"

/* Unix-socket connects fail at once (EAGAIN) when the backlog is full, so
 * keep it deep: bursts of hundreds of clients are normal.  The kernel caps
 * it at net.core.somaxconn. */
#define BACKLOG 4096
#define MAX_LISTENERS 64
/* Connections accepted from one listener per loop iteration.  libuv accepts
 * for as long as the kernel has connections queued, and a client that
 * reconnects as fast as it is closed keeps it queued: without a bound the
 * loop would do nothing else, starving every other client and never
 * reaching the close callbacks that free the refused connections. */
#define ACCEPTS_PER_TURN 64
#define SD_LISTEN_FDS_START 3

struct listener {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  bool is_tcp;
  char desc[128];
  unsigned accepted; /* this loop iteration */
  bool deferred;     /* a connection left queued until the next iteration */
};

static struct listener *listeners[MAX_LISTENERS];
static size_t n_listeners;
static uv_check_t accept_turn;
static bool accept_turn_started;
static bool unix_created;
/* The socket this server made, held open (O_PATH) so that its inode number
 * cannot go to another file: at exit the path is removed only if it still
 * names this one. */
static int unix_fd = -1;

static void on_connection(uv_stream_t *s, int status) {
  struct listener *l = s->data;
  if (status < 0) {
    /* Out of descriptors, libuv drops the pending clients: say so loudly. */
    log_msg(status == UV_EMFILE || status == UV_ENFILE ? LOG_LEVEL_ERR : LOG_LEVEL_WARNING,
            "%s: accept: %s", l->desc, uv_strerror(status));
    return;
  }
  if (l->accepted >= ACCEPTS_PER_TURN) {
    /* Left unaccepted, libuv stops watching this listener until uv_accept
     * is called: on_accept_turn does that once this iteration is over. */
    l->deferred = true;
    return;
  }
  l->accepted++;
  conn_accept(s, l->is_tcp);
}

/* After each poll: a new turn for every listener, and the connection a
 * busy listener left queued is taken now (which watches it again). */
static void on_accept_turn(uv_check_t *h) {
  (void)h;
  for (size_t i = 0; i < n_listeners; i++) {
    struct listener *l = listeners[i];
    l->accepted = 0;
    if (l->deferred && !uv_is_closing(&l->h.handle)) {
      l->deferred = false;
      l->accepted = 1;
      conn_accept(&l->h.stream, l->is_tcp);
    }
  }
}

static struct listener *listener_new(void) {
  if (n_listeners == MAX_LISTENERS)
    return NULL;
  struct listener *l = calloc(1, sizeof *l);
  if (l)
    listeners[n_listeners++] = l;
  return l;
}

static void on_listener_closed(uv_handle_t *h) { free(h->data); }

static int start_listening(struct listener *l) {
  l->h.handle.data = l;
  if (!accept_turn_started) {
    uv_check_init(l->h.handle.loop, &accept_turn);
    uv_check_start(&accept_turn, on_accept_turn);
    uv_unref((uv_handle_t *)&accept_turn);
    accept_turn_started = true;
  }
  int r = uv_listen(&l->h.stream, BACKLOG, on_connection);
  if (r < 0)
    log_msg(LOG_LEVEL_ERR, "%s: listen: %s", l->desc, uv_strerror(r));
  else
    log_msg(LOG_LEVEL_INFO, "listening on %s", l->desc);
  return r;
}

static int listen_tcp_addr(struct server *srv, const struct sockaddr *sa, const char *what) {
  struct listener *l = listener_new();
  if (!l)
    return -ENOMEM;
  l->is_tcp = true;
  char host[64] = "?";
  int port = 0;
  if (sa->sa_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)sa, host, sizeof host);
    port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    snprintf(l->desc, sizeof l->desc, "[%s]:%d", host, port);
  } else {
    uv_ip4_name((const struct sockaddr_in *)sa, host, sizeof host);
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    snprintf(l->desc, sizeof l->desc, "%s:%d", host, port);
  }
  uv_tcp_init(srv->loop, &l->h.tcp);
  l->h.handle.data = l;
  int r = uv_tcp_bind(&l->h.tcp, sa, sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "%s (%s): bind: %s", l->desc, what, uv_strerror(r));
    return r;
  }
  return start_listening(l);
}

static int listen_tcp(struct server *srv, const char *addr, const char *port) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  int r = getaddrinfo(addr, port, &hints, &res);
  if (r != 0) {
    log_msg(LOG_LEVEL_ERR, "--bind %s, port %s: %s", addr ? addr : "(all)", port,
            gai_strerror(r));
    return -EINVAL;
  }
  int ok = 0, err = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    r = listen_tcp_addr(srv, ai->ai_addr, addr ? addr : "all addresses");
    if (r == 0)
      ok++;
    else if (!(addr == NULL && ai->ai_family == AF_INET6 && r == UV_EAFNOSUPPORT))
      err = r;
  }
  freeaddrinfo(res);
  if (err < 0)
    return err;
  return ok ? 0 : -EADDRNOTAVAIL;
}

/* The address of the Unix socket at path, or -ENAMETOOLONG. */
static int unix_addr(const char *path, struct sockaddr_un *sa) {
  *sa = (struct sockaddr_un){.sun_family = AF_UNIX};
  size_t len = strlen(path);
  if (len >= sizeof sa->sun_path)
    return -ENAMETOOLONG;
  memcpy(sa->sun_path, path, len + 1);
  return 0;
}

/* Whether a server listens on the Unix socket sa: 1 when a connection is
 * taken, 0 when refused (a socket nobody listens on: stale), or a negative
 * errno when it cannot be told. */
static int unix_socket_live(const struct sockaddr_un *sa) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -errno;
  int r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  /* A backlog that is full answers EAGAIN: somebody listens. */
  int e = r < 0 ? errno : 0;
  close(fd);
  if (r == 0 || e == EAGAIN || e == EINPROGRESS)
    return 1;
  return e == ECONNREFUSED ? 0 : -e;
}

static int listen_unix(struct server *srv, const char *path) {
  struct sockaddr_un sa;
  if (unix_addr(path, &sa) < 0) {
    log_msg(LOG_LEVEL_ERR, "%s: bind: %s", path, strerror(ENAMETOOLONG));
    return -ENAMETOOLONG;
  }
  struct listener *l = listener_new();
  if (!l)
    return -ENOMEM;
  snprintf(l->desc, sizeof l->desc, "unix:%s", path);
  uv_pipe_init(srv->loop, &l->h.pipe, 0);
  l->h.handle.data = l;
  /* A stale socket from an earlier run would make bind fail; remove it, but
   * never anything that is not a socket, nor one a server listens on (its
   * clients would be cut off from it for good). */
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    int r = unix_socket_live(&sa);
    if (r != 0) {
      if (r > 0)
        log_msg(LOG_LEVEL_ERR,
                "%s: a server is listening on this socket; stop it or choose another path", path);
      else
        log_msg(LOG_LEVEL_ERR, "%s: cannot tell whether a server listens on it: %s", path,
                strerror(-r));
      return r > 0 ? -EADDRINUSE : r;
    }
    unlink(path);
  }
  /* Bound here, not by uv_pipe_bind: libuv would remove the path when the
   * listener closes, whatever socket it then names. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    log_msg(LOG_LEVEL_ERR, "%s: bind: %s", path, strerror(e));
    if (fd >= 0)
      close(fd);
    return -e;
  }
  unix_fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  unix_created = true;
  int r = uv_pipe_open(&l->h.pipe, fd);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "%s: %s", path, uv_strerror(r));
    close(fd);
    return r;
  }
  return start_listening(l);
}

/* systemd socket activation (sd_listen_fds semantics, without needing libsystemd). */
static int listen_systemd(struct server *srv) {
  const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
  if (!pid || !fds || strtol(pid, NULL, 10) != (long)getpid())
    return 0;
  long n = strtol(fds, NULL, 10);
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  if (n <= 0)
    return 0;
  for (long i = 0; i < n; i++) {
    int fd = SD_LISTEN_FDS_START + (int)i;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
      log_msg(LOG_LEVEL_ERR, "LISTEN_FDS: fd %d: %s", fd, strerror(errno));
      return -errno;
    }
    struct listener *l = listener_new();
    if (!l)
      return -ENOMEM;
    snprintf(l->desc, sizeof l->desc, "systemd socket fd %d", fd);
    int r;
    if (ss.ss_family == AF_UNIX) {
      uv_pipe_init(srv->loop, &l->h.pipe, 0);
      r = uv_pipe_open(&l->h.pipe, fd);
    } else {
      l->is_tcp = true;
      uv_tcp_init(srv->loop, &l->h.tcp);
      r = uv_tcp_open(&l->h.tcp, fd);
    }
    l->h.handle.data = l;
    if (r < 0) {
      log_msg(LOG_LEVEL_ERR, "%s: %s", l->desc, uv_strerror(r));
      return r;
    }
    r = start_listening(l);
    if (r < 0)
      return r;
  }
  return (int)n;
}

int listen_start(struct server *srv) {
  const struct settings *s = srv->cfg;
  if (s->stdio)
    return conn_start_stdio();
  int r = listen_systemd(srv);
  if (r != 0)
    return r < 0 ? r : 0;
  if (s->unix_path) {
    r = listen_unix(srv, s->unix_path);
    if (r < 0)
      return r;
  }
  /* TCP unless only a Unix socket was asked for. */
  if (!s->unix_path || s->port || s->n_binds) {
    char defport[16];
    snprintf(defport, sizeof defport, "%d", NBD_DEFAULT_PORT);
    const char *port = s->port ? s->port : defport;
    if (s->n_binds == 0) {
      r = listen_tcp(srv, NULL, port);
      if (r < 0)
        return r;
    }
    for (size_t i = 0; i < s->n_binds; i++) {
      r = listen_tcp(srv, s->binds[i], port);
      if (r < 0)
        return r;
    }
  }
  return 0;
}

void listen_stop(struct server *srv) {
  for (size_t i = 0; i < n_listeners; i++)
    if (!uv_is_closing(&listeners[i]->h.handle))
      uv_close(&listeners[i]->h.handle, on_listener_closed);
  n_listeners = 0;
  if (accept_turn_started && !uv_is_closing((uv_handle_t *)&accept_turn))
    uv_close((uv_handle_t *)&accept_turn, NULL);
}

void listen_cleanup(struct server *srv) {
  /* Only the socket made here: another may have taken the path since. */
  struct stat st, ours;
  if (unix_created && srv->cfg->unix_path &&
      (unix_fd < 0 || (lstat(srv->cfg->unix_path, &st) == 0 && fstat(unix_fd, &ours) == 0 &&
                       st.st_dev == ours.st_dev && st.st_ino == ours.st_ino)))
    unlink(srv->cfg->unix_path);
  if (unix_fd >= 0)
    close(unix_fd);
  unix_fd = -1;
}
