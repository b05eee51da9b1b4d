/* loop-floor: the fastest an event-loop NBD server can answer on this
 * machine, as a yardstick for vhdnbd's figures.
 *
 *   loop-floor [-t | -l N] [-s | -c] -U SOCKET | -p PORT  [-P PIDFILE] FILE
 *
 * Serves FILE (raw, read-write) on the Unix socket SOCKET or on TCP
 * 127.0.0.1:PORT (TCP_NODELAY) to any number of clients, all from one
 * thread (unless -t or -l), and writes PIDFILE once it listens: epoll_wait,
 * read the request, pread or pwrite the file, write the reply, epoll_wait
 * again: no queue, no worker, no format, no checks beyond what framing
 * needs.  (It writes on the loop
 * thread, which vhdnbd must not do on file systems that refuse
 * RWF_NOWAIT writes; so for writes it is a floor vhdnbd is not allowed to
 * reach by design.)  Simple replies only; FLUSH is fdatasync; it stops at
 * SIGTERM or SIGINT.  bench/run measures it beside nbdkit's file plugin:
 * where vhdnbd is as fast as this, what is left between it and nbdkit is
 * the shape of the server (one loop, its wake-ups), not VHD.
 *
 * Variants, as yardsticks (bench/run measures -t beside the plain loop;
 * bench/RESULTS.md):
 *   -t  a thread per connection blocked in recv, as nbdkit has, instead of
 *       the epoll loop: whether the loop's wake-ups are what costs;
 *   -l N  N epoll loops, each on its own thread, new connections handed to
 *       them in turn: what a server with a loop per CPU could reach;
 *   -s  READ data spliced from the file through a pipe into the socket,
 *       and WRITE payloads from the socket through a pipe into the file
 *       (splice(2)): no copy through user space, what a server could gain
 *       by not copying the data at all;
 *   -c  WRITE payloads written to the file piece by piece as they arrive
 *       (a `recv` of what the socket holds, then its `pwrite`), not read
 *       whole first: whether copying into the page cache while the client
 *       still sends the rest of a large payload pays. */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#define MAX_LEN (32u << 20)
#define MAX_LOOPS 64

static int file_fd;
static uint64_t file_size;
static bool thread_per_conn, splice_reads, stream_writes;
/* Per thread: each epoll loop has one, -t one per connection. */
static __thread uint8_t *buf;
static __thread int splice_pipe[2] = {-1, -1};

static int read_full(int fd, void *p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = recv(fd, (uint8_t *)p + done, n - done, MSG_WAITALL);
    if (r <= 0) {
      if (r < 0 && errno == EINTR)
        continue;
      return -1;
    }
    done += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const struct iovec *iov0, int n) {
  struct iovec iov[2];
  memcpy(iov, iov0, (size_t)n * sizeof *iov);
  struct iovec *v = iov;
  while (n > 0) {
    ssize_t w = writev(fd, v, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    while (n > 0 && (size_t)w >= v->iov_len) {
      w -= (ssize_t)v->iov_len;
      v++;
      n--;
    }
    if (n > 0) {
      v->iov_base = (uint8_t *)v->iov_base + w;
      v->iov_len -= (size_t)w;
    }
  }
  return 0;
}

static int send_bytes(int fd, const void *p, size_t n) {
  struct iovec v = {(void *)p, n};
  return write_full(fd, &v, 1);
}

static int option_reply(int fd, uint32_t opt, uint32_t type, const void *data, uint32_t len) {
  uint8_t h[20];
  uint64_t magic = htobe64(0x3e889045565a9ULL);
  uint32_t o = htobe32(opt), t = htobe32(type), l = htobe32(len);
  memcpy(h, &magic, 8);
  memcpy(h + 8, &o, 4);
  memcpy(h + 12, &t, 4);
  memcpy(h + 16, &l, 4);
  struct iovec v[2] = {{h, 20}, {(void *)data, len}};
  return write_full(fd, v, len ? 2 : 1);
}

/* Fixed newstyle: every option but GO is declined; GO gets the size. */
static int handshake(int fd) {
  uint8_t greet[18];
  memcpy(greet, "NBDMAGICIHAVEOPT", 16);
  uint16_t hflags = htobe16(3); /* FIXED_NEWSTYLE | NO_ZEROES */
  memcpy(greet + 16, &hflags, 2);
  uint32_t cflags;
  if (send_bytes(fd, greet, sizeof greet) < 0 || read_full(fd, &cflags, 4) < 0)
    return -1;
  for (;;) {
    uint8_t h[16];
    if (read_full(fd, h, 16) < 0)
      return -1;
    uint32_t opt, len;
    memcpy(&opt, h + 8, 4);
    memcpy(&len, h + 12, 4);
    opt = be32toh(opt);
    len = be32toh(len);
    if (len > 65536)
      return -1;
    uint8_t data[65536];
    if (len && read_full(fd, data, len) < 0)
      return -1;
    if (opt == 7) { /* NBD_OPT_GO */
      uint8_t info[12];
      uint16_t type = 0; /* NBD_INFO_EXPORT */
      uint64_t size = htobe64(file_size);
      uint16_t tflags = htobe16(1 | 4); /* HAS_FLAGS | SEND_FLUSH */
      memcpy(info, &type, 2);
      memcpy(info + 2, &size, 8);
      memcpy(info + 10, &tflags, 2);
      if (option_reply(fd, opt, 3, info, sizeof info) < 0 || option_reply(fd, opt, 1, NULL, 0) < 0)
        return -1;
      return 0;
    }
    if (opt == 2) /* NBD_OPT_ABORT */
      return -1;
    if (option_reply(fd, opt, 0x80000001u, NULL, 0) < 0) /* NBD_REP_ERR_UNSUP */
      return -1;
  }
}

/* -s: the header, then len bytes of the file at off moved into the socket
 * through a pipe, page references rather than copies. */
static int splice_reply(int fd, const uint8_t rep[16], uint64_t off, uint32_t len) {
  if (splice_pipe[0] < 0) {
    if (pipe2(splice_pipe, O_CLOEXEC) < 0)
      return -1;
    fcntl(splice_pipe[1], F_SETPIPE_SZ, 1 << 20); /* fewer rounds; the default works too */
  }
  if (send(fd, rep, 16, MSG_MORE | MSG_NOSIGNAL) != 16)
    return -1;
  loff_t o = (loff_t)off;
  size_t left = len;
  while (left > 0) {
    ssize_t n = splice(file_fd, &o, splice_pipe[1], NULL, left, SPLICE_F_MOVE);
    if (n <= 0)
      return -1;
    left -= (size_t)n;
    while (n > 0) {
      ssize_t m = splice(splice_pipe[0], NULL, fd, NULL, (size_t)n,
                         SPLICE_F_MOVE | (left ? SPLICE_F_MORE : 0));
      if (m <= 0)
        return -1;
      n -= m;
    }
  }
  return 0;
}

/* A WRITE payload moved from the socket through a pipe into the file. */
static int splice_payload(int fd, uint64_t off, uint32_t len) {
  if (splice_pipe[0] < 0) {
    if (pipe2(splice_pipe, O_CLOEXEC) < 0)
      return -1;
    fcntl(splice_pipe[1], F_SETPIPE_SZ, 1 << 20);
  }
  loff_t o = (loff_t)off;
  size_t left = len;
  while (left > 0) {
    ssize_t n = splice(fd, NULL, splice_pipe[1], NULL, left, SPLICE_F_MOVE);
    if (n <= 0)
      return -1;
    left -= (size_t)n;
    while (n > 0) {
      ssize_t m = splice(splice_pipe[0], NULL, file_fd, &o, (size_t)n, SPLICE_F_MOVE);
      if (m <= 0)
        return -1;
      n -= m;
    }
  }
  return 0;
}

/* One request, read whole (the client sends each at once); -1 ends the
 * connection. */
static int serve_one(int fd) {
  if (!buf && !(buf = malloc(MAX_LEN)))
    return -1;
  uint8_t h[28];
  if (read_full(fd, h, sizeof h) < 0)
    return -1;
  uint16_t type;
  uint64_t off;
  uint32_t len;
  memcpy(&type, h + 6, 2);
  memcpy(&off, h + 16, 8);
  memcpy(&len, h + 24, 4);
  type = be16toh(type);
  off = be64toh(off);
  len = be32toh(len);
  uint8_t rep[16] = {0}; /* the error field stays 0 on the splice path */
  uint32_t magic = htobe32(0x67446698), err = 0;
  memcpy(rep, &magic, 4);
  memcpy(rep + 8, h + 8, 8); /* cookie */
  struct iovec v[2] = {{rep, 16}, {buf, 0}};
  int n = 1;
  if (len > MAX_LEN || off > file_size || len > file_size - off)
    return -1;
  switch (type) {
  case 0: /* READ */
    if (splice_reads && len > 0)
      return splice_reply(fd, rep, off, len);
    if (pread(file_fd, buf, len, (off_t)off) != (ssize_t)len)
      err = 5;
    else
      v[1].iov_len = len, n = 2;
    break;
  case 1: /* WRITE */
    if (splice_reads && len > 0) {
      if (splice_payload(fd, off, len) < 0)
        return -1;
      break;
    }
    if (stream_writes) {
      for (uint32_t done = 0; done < len;) {
        ssize_t r = recv(fd, buf + done, len - done, 0);
        if (r <= 0) {
          if (r < 0 && errno == EINTR)
            continue;
          return -1;
        }
        if (!err && pwrite(file_fd, buf + done, (size_t)r, (off_t)(off + done)) != r)
          err = 5;
        done += (uint32_t)r;
      }
      break;
    }
    if (read_full(fd, buf, len) < 0)
      return -1;
    if (pwrite(file_fd, buf, len, (off_t)off) != (ssize_t)len)
      err = 5;
    break;
  case 2: /* DISC */
    return -1;
  case 3: /* FLUSH */
    if (fdatasync(file_fd) < 0)
      err = 5;
    break;
  default:
    err = 22;
  }
  err = htobe32(err);
  memcpy(rep + 4, &err, 4);
  return write_full(fd, v, n);
}

static void *connection_thread(void *arg) {
  int fd = (int)(intptr_t)arg;
  while (serve_one(fd) == 0)
    ;
  close(fd);
  free(buf);
  if (splice_pipe[0] >= 0) {
    close(splice_pipe[0]);
    close(splice_pipe[1]);
  }
  return NULL;
}

/* Serves the connections of one epoll set; ls, when not -1, is the
 * listener, whose connections it hands to the sets in eps in turn. */
static int serve_loop(int ep, int ls, const int *eps, unsigned n_eps, bool tcp) {
  unsigned next = 0;
  for (;;) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, -1);
    if (n < 0 && errno != EINTR)
      return 1;
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
          continue;
        int one = 1;
        if (tcp)
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (handshake(c) < 0) {
          close(c);
          continue;
        }
        pthread_t t;
        if (thread_per_conn) {
          if (pthread_create(&t, NULL, connection_thread, (void *)(intptr_t)c) == 0)
            pthread_detach(t);
          else
            close(c);
          continue;
        }
        struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(eps[next++ % n_eps], EPOLL_CTL_ADD, c, &ce);
      } else if (serve_one(fd) < 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
      }
    }
  }
}

static void *loop_thread(void *arg) {
  int ep = (int)(intptr_t)arg;
  serve_loop(ep, -1, &ep, 1, false);
  return NULL;
}

static int listen_on(const char *unix_path, const char *port) {
  int ls;
  if (unix_path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(unix_path) >= sizeof a.sun_path)
      return -1;
    strcpy(a.sun_path, unix_path);
    unlink(unix_path);
    ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0)
      return -1;
  } else {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(ls, (struct sockaddr *)&a, sizeof a) < 0)
      return -1;
  }
  return listen(ls, 64) < 0 ? -1 : ls;
}

int main(int argc, char **argv) {
  const char *unix_path = NULL, *port = NULL, *pidfile = NULL;
  int opt;
  long n_loops = 1;
  while ((opt = getopt(argc, argv, "tl:scU:p:P:")) != -1) {
    if (opt == 't')
      thread_per_conn = true;
    else if (opt == 'l')
      n_loops = strtol(optarg, NULL, 10);
    else if (opt == 's')
      splice_reads = true;
    else if (opt == 'c')
      stream_writes = true;
    else if (opt == 'U')
      unix_path = optarg;
    else if (opt == 'p')
      port = optarg;
    else if (opt == 'P')
      pidfile = optarg;
    else
      optind = argc + 1;
  }
  if (optind != argc - 1 || !unix_path == !port || n_loops < 1 || n_loops > MAX_LOOPS ||
      (thread_per_conn && n_loops > 1)) {
    fprintf(stderr,
            "usage: loop-floor [-t | -l N] [-s | -c] -U SOCKET | -p PORT  [-P PIDFILE] FILE\n");
    return 2;
  }
  file_fd = open(argv[optind], O_RDWR);
  struct stat st;
  if (file_fd < 0 || fstat(file_fd, &st) < 0) {
    fprintf(stderr, "loop-floor: %s: %s\n", argv[optind], strerror(errno));
    return 1;
  }
  file_size = (uint64_t)st.st_size;
  int ls = listen_on(unix_path, port);
  if (ls < 0) {
    fprintf(stderr, "loop-floor: cannot listen on %s: %s\n", unix_path ? unix_path : port,
            strerror(errno));
    return 1;
  }
  if (pidfile) {
    FILE *f = fopen(pidfile, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
      fprintf(stderr, "loop-floor: %s: %s\n", pidfile, strerror(errno));
      return 1;
    }
  }
  int eps[MAX_LOOPS];
  for (long i = 0; i < n_loops; i++) {
    eps[i] = epoll_create1(EPOLL_CLOEXEC);
    if (eps[i] < 0) {
      fprintf(stderr, "loop-floor: epoll_create1: %s\n", strerror(errno));
      return 1;
    }
    pthread_t t;
    if (i > 0 && pthread_create(&t, NULL, loop_thread, (void *)(intptr_t)eps[i]) != 0) {
      fprintf(stderr, "loop-floor: cannot start loop %ld\n", i);
      return 1;
    }
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(eps[0], EPOLL_CTL_ADD, ls, &ev);
  return serve_loop(eps[0], ls, eps, (unsigned)n_loops, port != NULL);
}
