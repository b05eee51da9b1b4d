/* harness.c: shared plumbing of the protocol tests (see harness.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "endian-be.h"
#include "nbd-proto.h"
#include "harness.h"

#define MAX_SERVERS 16
/* Every bound on a wait here (the watchdog, raw socket timeouts, a server's
 * start and stop, raw_expect_close) only catches a hang: no test passes by
 * a wait running out.  So they are generous, and more so under the
 * sanitizers, which slow server and test several times over (more again
 * with make -j on a shared machine). */
#if defined(__SANITIZE_ADDRESS__)
#define SLOW 4u
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLOW 4u
#endif
#endif
#ifndef SLOW
#define SLOW 1u
#endif
#define RAW_TIMEOUT_S (15 * SLOW)

static char tmpdir[PATH_MAX];
static char vhdnbd[PATH_MAX];
static char vhdimg[PATH_MAX];
static const char *test_name = "test";
static pid_t servers[MAX_SERVERS];
static volatile sig_atomic_t nr_servers;
static bool failed;

/* ---- failures ------------------------------------------------------------ */

void harness_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "FAIL: %s: %s:%d: ", test_name, file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  failed = true;
  exit(1);
}

void harness_check_failed(const char *file, int line, const char *cond, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "FAIL: %s: %s:%d: check failed: %s: ", test_name, file, line, cond);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  failed = true;
  exit(1);
}

void harness_note(const char *fmt, ...) {
  va_list ap;
  printf("%s: ", test_name);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

void harness_skip(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "SKIP: %s: ", test_name);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(77);
}

void harness_expect_errno(const char *file, int line, const char *what, int r,
                          int err) {
  if (r != -1)
    harness_fail(file, line, "%s: succeeded, expected %s", what, strerror(err));
  if (nbd_get_errno() != err)
    harness_fail(file, line, "%s: failed with errno %d (%s), expected %d (%s); libnbd: %s",
                 what, nbd_get_errno(), strerror(nbd_get_errno()), err, strerror(err),
                 nbd_get_error());
}

/* ---- setup and teardown -------------------------------------------------- */

/* The watchdog: a hung server or client must fail the test, not the CI job. */
static void on_alarm(int sig) {
  static const char msg[] = "FAIL: test timed out (watchdog)\n";
  if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
    /* nothing more can be done */
  }
  for (int i = 0; i < nr_servers; i++)
    if (servers[i] > 0)
      kill(servers[i], SIGKILL);
  _exit(1);
}

static void remove_tmpdir(void) {
  if (!tmpdir[0])
    return;
  if (getenv("HARNESS_KEEP")) {
    fprintf(stderr, "%s: keeping %s\n", test_name, tmpdir);
    return;
  }
  const char *argv[] = {"rm", "-rf", tmpdir, NULL};
  harness_run(argv);
  tmpdir[0] = '\0';
}

static void at_exit(void) {
  for (int i = 0; i < nr_servers; i++) {
    if (servers[i] <= 0)
      continue;
    kill(servers[i], SIGTERM);
    int status;
    bool reaped = false;
    for (int t = 0; t < 100 && !reaped; t++) {
      if (waitpid(servers[i], &status, WNOHANG) == servers[i])
        reaped = true;
      else
        usleep(50000);
    }
    if (!reaped) {
      kill(servers[i], SIGKILL);
      waitpid(servers[i], &status, 0);
    }
    servers[i] = 0;
  }
  if (failed)
    fprintf(stderr, "%s: server logs are above; temp dir %s\n", test_name, tmpdir);
  remove_tmpdir();
}

static bool find_binary(char *out, const char *env, const char *name) {
  const char *p = getenv(env);
  if (p && *p)
    XSNPRINTF(out, PATH_MAX, "%s", p);
  else {
    const char *top = getenv("top_builddir");
    XSNPRINTF(out, PATH_MAX, "%s/%s", top && *top ? top : ".", name);
  }
  return access(out, X_OK) == 0;
}

void harness_init(const char *name, unsigned timeout_s) {
  test_name = name;
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  if (!find_binary(vhdnbd, "VHDNBD", "vhdnbd"))
    harness_skip("server binary %s is not built", vhdnbd);
  if (!find_binary(vhdimg, "VHDIMG", "vhdimg"))
    vhdimg[0] = '\0';

  const char *base = getenv("TMPDIR");
  XSNPRINTF(tmpdir, sizeof tmpdir, "%s/vhdnbd-%s.XXXXXX", base && *base ? base : "/tmp", name);
  if (!mkdtemp(tmpdir)) {
    tmpdir[0] = '\0';
    FAIL("mkdtemp: %s", strerror(errno));
  }
  atexit(at_exit);

  struct sigaction sa = {.sa_handler = on_alarm};
  sigaction(SIGALRM, &sa, NULL);
  alarm(timeout_s * SLOW);
}

int harness_finish(void) {
  int rc = 0;
  for (int i = 0; i < nr_servers; i++) {
    if (servers[i] <= 0)
      continue;
    pid_t pid = servers[i];
    int status = harness_stop_server(pid, SIGTERM, 20);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "FAIL: %s: server %d did not exit 0 on SIGTERM (%s %d)\n", test_name,
              (int)pid, WIFSIGNALED(status) ? "signal" : "status",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      rc = 1;
    }
  }
  if (rc == 0)
    harness_note("every server exited 0");
  failed = rc != 0;
  return rc;
}

const char *harness_tmpdir(void) { return tmpdir; }

const char *harness_path(const char *name) {
  static char ring[32][PATH_MAX];
  static unsigned next;
  char *p = ring[next++ % 32];
  XSNPRINTF(p, PATH_MAX, "%s/%s", tmpdir, name);
  return p;
}

const char *harness_vhdnbd(void) { return vhdnbd; }

const char *harness_vhdimg(void) {
  if (!vhdimg[0])
    FAIL("vhdimg is not built (set VHDIMG or top_builddir)");
  return vhdimg;
}

/* ---- subprocesses -------------------------------------------------------- */

int harness_run(const char *const *argv) {
  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    execvp(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      FAIL("waitpid: %s", strerror(errno));
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

static void print_argv(FILE *fp, const char *const *argv) {
  for (size_t i = 0; argv[i]; i++)
    fprintf(fp, "%s%s", i ? " " : "", argv[i]);
}

void harness_run_ok(const char *const *argv) {
  int r = harness_run(argv);
  if (r != 0) {
    fprintf(stderr, "command failed with status %d: ", r);
    print_argv(stderr, argv);
    fputc('\n', stderr);
    FAIL("command %s exited with %d", argv[0], r);
  }
}

bool harness_have_program(const char *name) {
  const char *path = getenv("PATH");
  if (!path)
    return false;
  char *copy = strdup(path);
  bool found = false;
  for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir && !found;
       dir = strtok_r(NULL, ":", &save)) {
    char full[PATH_MAX];
    XSNPRINTF(full, sizeof full, "%s/%s", dir, name);
    found = access(full, X_OK) == 0;
  }
  free(copy);
  return found;
}

static void write_file(const char *path, const void *buf, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    FAIL("%s: %s", path, strerror(errno));
  for (size_t done = 0; done < len;) {
    ssize_t n = write(fd, (const char *)buf + done, len - done);
    if (n < 0)
      FAIL("%s: write: %s", path, strerror(errno));
    done += (size_t)n;
  }
  if (close(fd) < 0)
    FAIL("%s: close: %s", path, strerror(errno));
}

/* ---- images -------------------------------------------------------------- */

const char *harness_qemu_image(const char *name, const char *type, uint64_t size) {
  if (!harness_have_program("qemu-img"))
    harness_skip("qemu-img is not installed");
  const char *path = harness_path(name);
  char opts[128], sz[32];
  XSNPRINTF(opts, sizeof opts, "subformat=%s,force_size=on", type);
  XSNPRINTF(sz, sizeof sz, "%" PRIu64, size);
  const char *argv[] = {"qemu-img", "create", "-q", "-f", "vpc", "-o", opts, path, sz, NULL};
  harness_run_ok(argv);
  return path;
}

const char *harness_vhdimg_create(const char *name, const char *type, const char *parent,
                                  uint64_t size) {
  const char *path = harness_path(name);
  char sz[32];
  XSNPRINTF(sz, sizeof sz, "%" PRIu64, size);
  if (parent) {
    const char *argv[] = {harness_vhdimg(), "create", "-t", type, "-b", parent, path, NULL};
    harness_run_ok(argv);
  } else {
    const char *argv[] = {harness_vhdimg(), "create", "-t", type, "--exact", path, sz, NULL};
    harness_run_ok(argv);
  }
  return path;
}

const char *harness_qemu_image_from(const char *name, const char *type, const void *data,
                                    size_t len) {
  if (!harness_have_program("qemu-img"))
    harness_skip("qemu-img is not installed");
  char raw[PATH_MAX];
  XSNPRINTF(raw, sizeof raw, "%s.raw", harness_path(name));
  write_file(raw, data, len);
  const char *path = harness_path(name);
  char opts[128];
  XSNPRINTF(opts, sizeof opts, "subformat=%s,force_size=on", type);
  const char *argv[] = {"qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", opts,
                        raw, path, NULL};
  harness_run_ok(argv);
  unlink(raw);
  return path;
}

char *harness_read_file(const char *path) {
  FILE *fp = fopen(path, "r");
  if (!fp)
    FAIL("%s: %s", path, strerror(errno));
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  for (size_t n; buf && (n = fread(buf + len, 1, cap - len - 1, fp)) > 0;) {
    len += n;
    if (cap - len == 1)
      buf = realloc(buf, cap *= 2);
  }
  if (!buf)
    FAIL("out of memory reading %s", path);
  if (ferror(fp))
    FAIL("%s: read error", path);
  fclose(fp);
  buf[len] = '\0';
  return buf;
}

int harness_check_image(const char *path) {
  const char *argv[] = {harness_vhdimg(), "check", path, NULL};
  return harness_run(argv);
}

static void compare_file(const char *path, const void *expected, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    FAIL("%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) < 0)
    FAIL("%s: fstat: %s", path, strerror(errno));
  if ((uint64_t)st.st_size != len)
    FAIL("%s: %" PRIu64 " bytes, expected %zu", path, (uint64_t)st.st_size, len);
  char buf[65536];
  for (size_t done = 0; done < len;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0)
      FAIL("%s: read: %s", path, n < 0 ? strerror(errno) : "short file");
    if (memcmp(buf, (const char *)expected + done, (size_t)n) != 0) {
      for (ssize_t i = 0; i < n; i++)
        if (buf[i] != ((const char *)expected)[done + (size_t)i])
          FAIL("%s: differs from the expected content at byte %zu", path, done + (size_t)i);
    }
    done += (size_t)n;
  }
  close(fd);
}

void harness_expect_image_content(const char *path, const void *expected, size_t len,
                                  bool qemu_can_read) {
  static unsigned n;
  char exp_name[64], out_name[64];
  XSNPRINTF(exp_name, sizeof exp_name, "expected-%u.raw", n);
  XSNPRINTF(out_name, sizeof out_name, "converted-%u.raw", n++);
  char exp_path[PATH_MAX], out_path[PATH_MAX];
  XSNPRINTF(exp_path, sizeof exp_path, "%s", harness_path(exp_name));
  XSNPRINTF(out_path, sizeof out_path, "%s", harness_path(out_name));

  const char *conv[] = {harness_vhdimg(), "convert", "-O", "raw", path, out_path, NULL};
  harness_run_ok(conv);
  compare_file(out_path, expected, len);
  unlink(out_path);

  if (qemu_can_read && harness_have_program("qemu-img")) {
    write_file(exp_path, expected, len);
    const char *cmp[] = {"qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", path, exp_path,
                         NULL};
    int r = harness_run(cmp);
    if (r != 0)
      FAIL("qemu-img compare %s %s: status %d (1 = content differs)", path, exp_path, r);
    unlink(exp_path);
  }
}

const char *harness_sha256(const char *path, char out[65]) {
  char cmd[PATH_MAX + 32];
  XSNPRINTF(cmd, sizeof cmd, "sha256sum '%s'", path);
  FILE *fp = popen(cmd, "r");
  if (!fp)
    FAIL("popen sha256sum: %s", strerror(errno));
  if (fscanf(fp, "%64s", out) != 1)
    FAIL("sha256sum %s: no output", path);
  if (pclose(fp) != 0)
    FAIL("sha256sum %s failed", path);
  return out;
}

/* ---- servers ------------------------------------------------------------- */

static void forget_server(pid_t pid) {
  for (int i = 0; i < nr_servers; i++)
    if (servers[i] == pid)
      servers[i] = 0;
}

static pid_t start_server(const char *sock, const char *const *args, const char *log_path) {
  static unsigned n;
  if (nr_servers >= MAX_SERVERS)
    FAIL("too many servers");
  char pidname[32], pidfile[PATH_MAX];
  XSNPRINTF(pidname, sizeof pidname, "vhdnbd-%u.pid", n++);
  XSNPRINTF(pidfile, sizeof pidfile, "%s", harness_path(pidname));
  unlink(pidfile);

  const char *argv[64];
  size_t a = 0;
  argv[a++] = vhdnbd;
  argv[a++] = "-U";
  argv[a++] = sock;
  argv[a++] = "--pidfile";
  argv[a++] = pidfile;
  for (size_t i = 0; args && args[i]; i++) {
    if (a >= 63)
      FAIL("too many server arguments");
    argv[a++] = args[i];
  }
  /* Options every server of the run gets (VHDNBD_TEST_ARGS, split at
   * spaces): run-tests.sh serves these tests again from several event
   * loops. */
  static char extra[256];
  const char *env = getenv("VHDNBD_TEST_ARGS");
  if (env && *env) {
    XSNPRINTF(extra, sizeof extra, "%s", env);
    for (char *save = NULL, *t = strtok_r(extra, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
      if (a >= 63)
        FAIL("too many server arguments");
      argv[a++] = t;
    }
  }
  argv[a] = NULL;
  printf("%s: starting: ", test_name);
  print_argv(stdout, argv);
  putchar('\n');

  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    /* A test killed by a signal or a sanitizer abort runs no atexit
     * handler: the server must not outlive it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (log_path) {
      int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) {
        fprintf(stderr, "%s: %s\n", log_path, strerror(errno));
        _exit(126);
      }
    }
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  servers[nr_servers++] = pid;

  /* The server writes its pidfile only once it listens. */
  for (unsigned i = 0; i < 600 * SLOW; i++) {
    struct stat st;
    if (stat(pidfile, &st) == 0 && st.st_size > 0)
      return pid;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      forget_server(pid);
      FAIL("vhdnbd exited (status 0x%x) before listening on %s", status, sock);
    }
    usleep(50000);
  }
  FAIL("vhdnbd did not write %s within %u s", pidfile, 30 * SLOW);
}

pid_t harness_start_server(const char *sock, const char *const *args) {
  return start_server(sock, args, NULL);
}

pid_t harness_start_server_logged(const char *sock, const char *const *args,
                                  const char *log_path) {
  return start_server(sock, args, log_path);
}

pid_t harness_start_server_image(const char *sock, const char *image, bool readonly) {
  const char *args[] = {readonly ? "-r" : image, readonly ? image : NULL, NULL};
  return harness_start_server(sock, args);
}

int harness_stop_server(pid_t pid, int sig, unsigned timeout_s) {
  if (kill(pid, sig) < 0 && errno != ESRCH)
    FAIL("kill %d: %s", (int)pid, strerror(errno));
  timeout_s *= SLOW;
  for (unsigned i = 0; i < timeout_s * 20; i++) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      forget_server(pid);
      return status;
    }
    if (r < 0)
      FAIL("waitpid %d: %s", (int)pid, strerror(errno));
    usleep(50000);
  }
  FAIL("server %d did not exit within %u s of signal %d", (int)pid, timeout_s, sig);
}

bool harness_server_alive(pid_t pid) {
  int status;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) {
    forget_server(pid);
    fprintf(stderr, "server %d has exited: %s %d\n", (int)pid,
            WIFSIGNALED(status) ? "signal" : "status",
            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return false;
  }
  return r == 0;
}

/* ---- libnbd -------------------------------------------------------------- */

struct nbd_handle *harness_handle(const char *name) {
  struct nbd_handle *h = nbd_create();
  if (!h)
    FAIL("nbd_create: %s", nbd_get_error());
  NBD_OK(nbd_set_export_name(h, name));
  return h;
}

struct nbd_handle *harness_connect(const char *sock, const char *name) {
  struct nbd_handle *h = harness_handle(name);
  NBD_OK(nbd_connect_unix(h, sock));
  return h;
}

void harness_close(struct nbd_handle *h) {
  if (!h)
    return;
  /* A clean NBD_CMD_DISC when the connection is still up. */
  if (nbd_aio_is_ready(h))
    nbd_shutdown(h, 0);
  nbd_close(h);
}

/* ---- raw sockets --------------------------------------------------------- */

int raw_connect(const char *sock) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(sock) >= sizeof sun.sun_path)
    FAIL("socket path too long: %s", sock);
  strcpy(sun.sun_path, sock);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    FAIL("socket: %s", strerror(errno));
  if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
    FAIL("connect %s: %s", sock, strerror(errno));
  struct timeval tv = {.tv_sec = RAW_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

int raw_write(int fd, const void *buf, size_t len) {
  for (size_t done = 0; done < len;) {
    ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return -ETIMEDOUT;
      if (errno == ECONNRESET)
        return -EPIPE;
      return -errno;
    }
    done += (size_t)n;
  }
  return 0;
}

int raw_read(int fd, void *buf, size_t len) {
  for (size_t done = 0; done < len;) {
    ssize_t n = recv(fd, (char *)buf + done, len - done, 0);
    if (n == 0)
      return -EPIPE;
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return -ETIMEDOUT;
      if (errno == ECONNRESET)
        return -EPIPE;
      return -errno;
    }
    done += (size_t)n;
  }
  return 0;
}

int raw_expect_close(int fd, unsigned timeout_ms) {
  timeout_ms *= SLOW;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (elapsed >= (long)timeout_ms)
      return -ETIMEDOUT;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, (int)(timeout_ms - (unsigned long)elapsed));
    if (r < 0 && errno != EINTR)
      FAIL("poll: %s", strerror(errno));
    if (r <= 0)
      continue;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return 0;
  }
}

void raw_handshake(int fd, uint32_t client_flags) {
  uint8_t greeting[NBD_GREETING_SIZE];
  int r = raw_read(fd, greeting, sizeof greeting);
  if (r < 0)
    FAIL("reading the greeting: %s", strerror(-r));
  CHECK(be64_load(greeting) == NBD_MAGIC, "greeting magic %" PRIx64, be64_load(greeting));
  CHECK(be64_load(greeting + 8) == NBD_NEW_VERSION, "greeting: not newstyle");
  CHECK(be16_load(greeting + 16) & NBD_FLAG_FIXED_NEWSTYLE, "greeting: not fixed newstyle");
  uint8_t flags[NBD_CLIENT_FLAGS_SIZE];
  be32_store(flags, client_flags);
  r = raw_write(fd, flags, sizeof flags);
  if (r < 0)
    FAIL("sending client flags: %s", strerror(-r));
}

int raw_send_option(int fd, uint32_t option, const void *data, uint32_t len) {
  uint8_t hdr[NBD_OPTION_HDR_SIZE];
  be64_store(hdr, NBD_NEW_VERSION);
  be32_store(hdr + 8, option);
  be32_store(hdr + 12, len);
  int r = raw_write(fd, hdr, sizeof hdr);
  if (r == 0 && len)
    r = raw_write(fd, data, len);
  return r;
}

int raw_recv_option_reply(int fd, uint32_t *option, uint32_t *type, void **data,
                          uint32_t *len) {
  uint8_t hdr[NBD_OPTION_REPLY_HDR_SIZE];
  int r = raw_read(fd, hdr, sizeof hdr);
  if (r < 0)
    return r;
  CHECK(be64_load(hdr) == NBD_OPT_REPLY_MAGIC, "option reply magic %" PRIx64, be64_load(hdr));
  *option = be32_load(hdr + 8);
  *type = be32_load(hdr + 12);
  uint32_t n = be32_load(hdr + 16);
  CHECK(n <= 64 * KiB, "option reply of %" PRIu32 " bytes", n);
  void *buf = malloc(n + 1);
  if (!buf)
    FAIL("malloc");
  r = raw_read(fd, buf, n);
  if (r < 0) {
    free(buf);
    return r;
  }
  if (len)
    *len = n;
  if (data)
    *data = buf;
  else
    free(buf);
  return 0;
}

uint32_t raw_opt_go(int fd, const char *name, uint64_t *size, uint16_t *flags) {
  size_t nlen = strlen(name);
  uint8_t *data = malloc(nlen + 6);
  if (!data)
    FAIL("malloc");
  be32_store(data, (uint32_t)nlen);
  memcpy(data + 4, name, nlen);
  be16_store(data + 4 + nlen, 0);
  int r = raw_send_option(fd, NBD_OPT_GO, data, (uint32_t)(nlen + 6));
  free(data);
  if (r < 0)
    FAIL("sending NBD_OPT_GO: %s", strerror(-r));
  for (int i = 0; i < 32; i++) {
    uint32_t opt, type, len;
    void *payload;
    r = raw_recv_option_reply(fd, &opt, &type, &payload, &len);
    if (r < 0)
      FAIL("reading the reply to NBD_OPT_GO: %s", strerror(-r));
    CHECK(opt == NBD_OPT_GO, "reply names option %" PRIu32, opt);
    if (type == NBD_REP_INFO && len >= 2 && be16_load(payload) == NBD_INFO_EXPORT) {
      CHECK(len == 12, "NBD_INFO_EXPORT of length %" PRIu32, len);
      if (size)
        *size = be64_load((uint8_t *)payload + 2);
      if (flags)
        *flags = be16_load((uint8_t *)payload + 10);
    }
    free(payload);
    if (type != NBD_REP_INFO)
      return type;
  }
  FAIL("NBD_OPT_GO: more than 32 replies");
}

int raw_send_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                     uint32_t len) {
  uint8_t req[NBD_REQUEST_SIZE];
  be32_store(req, NBD_REQUEST_MAGIC);
  be16_store(req + 4, flags);
  be16_store(req + 6, type);
  be64_store(req + 8, cookie);
  be64_store(req + 16, offset);
  be32_store(req + 24, len);
  return raw_write(fd, req, sizeof req);
}

int raw_recv_simple_reply(int fd, uint64_t *cookie, uint32_t *error) {
  uint8_t rep[NBD_SIMPLE_REPLY_SIZE];
  int r = raw_read(fd, rep, sizeof rep);
  if (r < 0)
    return r;
  CHECK(be32_load(rep) == NBD_SIMPLE_REPLY_MAGIC, "simple reply magic 0x%" PRIx32,
        be32_load(rep));
  *error = be32_load(rep + 4);
  *cookie = be64_load(rep + 8);
  return 0;
}

int raw_send_request_ext(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
                         uint64_t offset, uint64_t len) {
  uint8_t req[NBD_EXTENDED_REQUEST_SIZE];
  be32_store(req, NBD_EXTENDED_REQUEST_MAGIC);
  be16_store(req + 4, flags);
  be16_store(req + 6, type);
  be64_store(req + 8, cookie);
  be64_store(req + 16, offset);
  be64_store(req + 24, len);
  return raw_write(fd, req, sizeof req);
}

int raw_recv_ext_reply(int fd, struct raw_ext_reply *rep) {
  uint8_t hdr[NBD_EXTENDED_REPLY_SIZE];
  memset(rep, 0, sizeof *rep);
  int r = raw_read(fd, hdr, sizeof hdr);
  if (r < 0)
    return r;
  CHECK(be32_load(hdr) == NBD_EXTENDED_REPLY_MAGIC, "extended reply magic 0x%" PRIx32,
        be32_load(hdr));
  rep->flags = be16_load(hdr + 4);
  rep->type = be16_load(hdr + 6);
  rep->cookie = be64_load(hdr + 8);
  rep->offset = be64_load(hdr + 16);
  rep->length = be64_load(hdr + 24);
  CHECK(rep->length <= 64 * MiB, "extended reply payload of %" PRIu64 " bytes", rep->length);
  if (rep->length == 0)
    return 0;
  rep->payload = malloc(rep->length);
  if (!rep->payload)
    FAIL("malloc");
  r = raw_read(fd, rep->payload, rep->length);
  if (r < 0) {
    free(rep->payload);
    rep->payload = NULL;
  }
  return r;
}

/* ---- data ---------------------------------------------------------------- */

/* One 64-bit word per aligned 8 bytes, so filling is cheap even under ASan. */
static inline uint64_t pattern_word(uint64_t word, uint32_t seed) {
  uint64_t x = word * UINT64_C(0x9E3779B97F4A7C15) + (seed + 1) * UINT64_C(0xC2B2AE3D27D4EB4F);
  x ^= x >> 29;
  x *= UINT64_C(0xBF58476D1CE4E5B9);
  x ^= x >> 32;
  return x;
}

static inline uint8_t pattern_byte(uint64_t off, uint32_t seed) {
  return (uint8_t)(pattern_word(off >> 3, seed) >> (8 * (off & 7)));
}

void pattern_fill(void *buf, size_t len, uint64_t off, uint32_t seed) {
  uint8_t *p = buf;
  size_t i = 0;
  for (; i < len && ((off + i) & 7); i++)
    p[i] = pattern_byte(off + i, seed);
  for (; i + 8 <= len; i += 8) {
    uint64_t w = pattern_word((off + i) >> 3, seed);
    for (unsigned b = 0; b < 8; b++)
      p[i + b] = (uint8_t)(w >> (8 * b));
  }
  for (; i < len; i++)
    p[i] = pattern_byte(off + i, seed);
}

long pattern_check(const void *buf, size_t len, uint64_t off, uint32_t seed) {
  const uint8_t *p = buf;
  uint8_t expect[65536];
  for (size_t done = 0; done < len;) {
    size_t n = MIN(sizeof expect, len - done);
    pattern_fill(expect, n, off + done, seed);
    if (memcmp(p + done, expect, n) != 0)
      for (size_t i = 0; i < n; i++)
        if (p[done + i] != expect[i])
          return (long)(done + i);
    done += n;
  }
  return -1;
}

bool is_zero(const void *buf, size_t len) {
  const uint8_t *p = buf;
  return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}
