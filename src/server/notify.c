/* notify.c: telling the outside world we are up: sd_notify (Type=notify units)
 * and the pidfile (scripts, tests). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "log.h"
#include "server.h"

void notify_ready(void) {
#ifdef HAVE_LIBSYSTEMD
  sd_notify(0, "READY=1");
#endif
}

/* systemd 253 and later want the CLOCK_MONOTONIC time with RELOADING=1
 * (Type=notify-reload); older ones ignore it. */
void notify_reloading(void) {
#ifdef HAVE_LIBSYSTEMD
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
#endif
}

void notify_stopping(void) {
#ifdef HAVE_LIBSYSTEMD
  sd_notify(0, "STOPPING=1");
#endif
}

/* Written to a temporary name and renamed, so a reader never sees it empty. */
int pidfile_write(const char *path) {
  size_t n = strlen(path) + 16;
  char *tmp = malloc(n);
  if (!tmp)
    return -ENOMEM;
  snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
  /* 0644 whatever the umask lets group members do with the socket
   * beside it (the service's 0007): only the server writes its pid. */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
  int r = 0;
  if (!f) {
    r = -errno;
    if (fd >= 0)
      close(fd);
  } else {
    bool ok = fprintf(f, "%ld\n", (long)getpid()) > 0;
    if (fclose(f) != 0 || !ok)
      r = errno ? -errno : -EIO;
  }
  if (r == 0 && rename(tmp, path) < 0)
    r = -errno;
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "--pidfile %s: %s", path, strerror(-r));
    unlink(tmp);
  }
  free(tmp);
  return r;
}

void pidfile_remove(const char *path) {
  if (path)
    unlink(path);
}
