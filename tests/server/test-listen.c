/* Where and what the server serves: TCP on 127.0.0.1 (and ::1 when the host
 * has IPv6) next to a Unix socket, exports from a -C config file (default
 * export, read-only, descriptions), and refusals at startup that name what is
 * wrong (missing image, broken config) instead of serving half. */
#include <config.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define SIZE (2 * MiB)

/* A port nobody listens on now (the kernel picks it). */
static int free_port(int family) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_storage ss = {0};
  socklen_t len;
  if (family == AF_INET6) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_addr = in6addr_loopback;
    len = sizeof *s6;
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *s4;
  }
  int port = -1;
  if (bind(fd, (struct sockaddr *)&ss, len) == 0 &&
      getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
    port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                    : ((struct sockaddr_in *)&ss)->sin_port);
  close(fd);
  return port;
}

static void io_tcp(const char *host, int port, uint32_t seed) {
  char portstr[16];
  XSNPRINTF(portstr, sizeof portstr, "%d", port);
  struct nbd_handle *h = harness_handle("");
  if (nbd_connect_tcp(h, host, portstr) == -1)
    FAIL("connecting to %s port %d: %s", host, port, nbd_get_error());
  uint8_t buf[4096], back[4096];
  pattern_fill(buf, sizeof buf, seed * 4096, seed);
  NBD_OK(nbd_pwrite(h, buf, sizeof buf, seed * 4096, 0));
  NBD_OK(nbd_pread(h, back, sizeof back, seed * 4096, 0));
  CHECK(memcmp(buf, back, sizeof buf) == 0, "TCP %s: data", host);
  harness_close(h);
}

static void test_tcp(void) {
  const char *img = harness_qemu_image("tcp.vhd", "dynamic", SIZE);
  char image[4096], sock[4096], port4[16], port6[16];
  XSNPRINTF(image, sizeof image, "%s", img);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock-tcp"));
  int p4 = free_port(AF_INET), p6 = free_port(AF_INET6);
  CHECK(p4 > 0, "no free IPv4 port");
  XSNPRINTF(port4, sizeof port4, "%d", p4);
  const char *args[] = {"-p", port4, "-b", "127.0.0.1", image, NULL};
  pid_t pid = harness_start_server(sock, args);
  io_tcp("127.0.0.1", p4, 1);
  /* The Unix socket is served as well. */
  struct nbd_handle *h = harness_connect(sock, "");
  harness_close(h);
  CHECK(harness_stop_server(pid, SIGTERM, 10) == 0, "TCP server: bad exit status");

  if (p6 > 0) {
    XSNPRINTF(port6, sizeof port6, "%d", p6);
    const char *args6[] = {"-p", port6, "-b", "::1", "-b", "127.0.0.1", image, NULL};
    pid = harness_start_server(sock, args6);
    io_tcp("::1", p6, 2);
    io_tcp("127.0.0.1", p6, 3);
    CHECK(harness_stop_server(pid, SIGTERM, 10) == 0, "TCP server (::1): bad exit status");
  } else
    printf("PARTIAL: no IPv6 loopback: ::1 not tested\n");
}

struct listed {
  int count;
  bool dflt, data;
};

static int list_cb(void *opaque, const char *name, const char *description) {
  struct listed *l = opaque;
  l->count++;
  if (strcmp(name, "") == 0)
    l->dflt = true;
  if (strcmp(name, "data") == 0) {
    l->data = true;
    CHECK(strcmp(description, "Shared data disk") == 0, "data: description \"%s\"", description);
  }
  return 0;
}

static void write_text(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0)
    FAIL("writing %s: %s", path, strerror(errno));
}

static void test_config(void) {
  char dflt[4096], data[4096], conf[4096], text[16384], sock[4096];
  XSNPRINTF(dflt, sizeof dflt, "%s", harness_qemu_image("conf-default.vhd", "dynamic", SIZE));
  XSNPRINTF(data, sizeof data, "%s", harness_qemu_image("conf-data.vhd", "fixed", 2 * SIZE));
  XSNPRINTF(conf, sizeof conf, "%s", harness_path("vhdnbd.conf"));
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock-conf"));
  XSNPRINTF(text, sizeof text,
            "# test configuration\n"
            "[global]\n"
            "max-connections = 8\n"
            "\n"
            "[export]\n"
            "image = %s\n"
            "\n"
            "; the data disk\n"
            "[export data]\n"
            "image = %s\n"
            "read-only = yes\n"
            "description = \"Shared data disk\"\n",
            dflt, data);
  write_text(conf, text);
  const char *args[] = {"-C", conf, NULL};
  pid_t pid = harness_start_server(sock, args);

  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_set_opt_mode(h, true));
  NBD_OK(nbd_connect_unix(h, sock));
  struct listed l = {0};
  NBD_OK(nbd_opt_list(h, (nbd_list_callback){.callback = list_cb, .user_data = &l}));
  CHECK(l.dflt && l.data, "config exports: default %d data %d", l.dflt, l.data);
  NBD_OK(nbd_set_export_name(h, "data"));
  NBD_OK(nbd_opt_info(h));
  CHECK(nbd_is_read_only(h) == 1, "config: data is not read-only");
  CHECK(nbd_get_size(h) == (int64_t)(2 * SIZE), "config: data size %" PRId64, nbd_get_size(h));
  NBD_OK(nbd_set_export_name(h, ""));
  NBD_OK(nbd_opt_go(h));
  CHECK(nbd_is_read_only(h) == 0, "config: the default export is read-only");
  CHECK(nbd_get_size(h) == (int64_t)SIZE, "config: default size %" PRId64, nbd_get_size(h));
  harness_close(h);
  CHECK(harness_stop_server(pid, SIGTERM, 10) == 0, "config server: bad exit status");
}

/* Runs vhdnbd expecting it to refuse to start: non-zero exit within 10 s and
 * a message on stderr that contains `needle`. */
static void expect_refusal(const char *const *args, const char *needle, const char *what) {
  char errpath[4096];
  XSNPRINTF(errpath, sizeof errpath, "%s", harness_path("stderr.txt"));
  pid_t pid = fork();
  if (pid < 0)
    FAIL("fork: %s", strerror(errno));
  if (pid == 0) {
    if (!freopen(errpath, "w", stderr))
      _exit(126);
    const char *argv[32] = {harness_vhdnbd()};
    for (int i = 0; args[i] && i < 30; i++)
      argv[i + 1] = args[i];
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status = -1;
  for (int i = 0; i < 200; i++) {
    if (waitpid(pid, &status, WNOHANG) == pid)
      break;
    status = -1;
    usleep(50000);
  }
  if (status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL("%s: vhdnbd kept running", what);
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0, "%s: exit status 0x%x", what, status);
  FILE *fp = fopen(errpath, "r");
  char msg[4096] = "";
  size_t n = fp ? fread(msg, 1, sizeof msg - 1, fp) : 0;
  msg[n] = '\0';
  if (fp)
    fclose(fp);
  CHECK(strstr(msg, needle), "%s: the message does not name %s: %s", what, needle, msg);
  harness_note("%s: %s", what, strtok(msg, "\n"));
}

static void test_refusals(void) {
  char sock[4096], missing[4096], conf[4096], text[8192];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock-bad"));
  XSNPRINTF(missing, sizeof missing, "%s", harness_path("no-such-image.vhd"));
  const char *a1[] = {"-U", sock, missing, NULL};
  expect_refusal(a1, "no-such-image.vhd", "a missing image");

  XSNPRINTF(conf, sizeof conf, "%s", harness_path("broken.conf"));
  XSNPRINTF(text, sizeof text, "[export x]\nimage = %s\nbogus-key = 1\n",
            harness_qemu_image("broken-ok.vhd", "dynamic", SIZE));
  write_text(conf, text);
  const char *a2[] = {"-U", sock, "-C", conf, NULL};
  expect_refusal(a2, "bogus-key", "an unknown config key");

  XSNPRINTF(text, sizeof text, "[export x]\nread-only = yes\n");
  write_text(conf, text);
  expect_refusal(a2, "broken.conf", "an export without an image");

  char notvhd[4096];
  XSNPRINTF(notvhd, sizeof notvhd, "%s", harness_path("not-a-vhd.vhd"));
  write_text(notvhd, "this is not a VHD image, not even close\n");
  const char *a3[] = {"-U", sock, notvhd, NULL};
  expect_refusal(a3, "not-a-vhd.vhd", "a file that is not a VHD");
}

int main(void) {
  harness_init("test-listen", 60);
  test_tcp();
  test_config();
  test_refusals();
  return harness_finish();
}
