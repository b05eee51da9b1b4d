/* open-time.c: how long vhd_open takes on one image (the server's startup
 * cost per export), measured with CLOCK_MONOTONIC around vhd_open alone.
 *
 * Usage: open-time [-n COUNT] [--cold] IMAGE
 *
 * Opens the image read-only COUNT times (default 20) and prints one line:
 *   open_ms min=M median=M max=M cpu_median=M count=N cold=0|1 size=BYTES
 * cpu_median is the process CPU time (user + system) of one vhd_open: on a
 * busy machine the wall-clock figures include waiting for a CPU, this does not.
 * --cold asks the kernel to drop the image's cached pages before each open
 * (posix_fadvise DONTNEED on that file only, so other work on the machine is
 * not disturbed), which approximates a first open after boot.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vhd.h"

#define MAX_COUNT 1000

static double clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Drops the cached pages of one file; failure only makes the run warm. */
static int drop_cache(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int r = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  return -r;
}

static int usage(FILE *f, int status) {
  fprintf(f, "Usage: open-time [-n COUNT] [--cold] IMAGE\n");
  return status;
}

int main(int argc, char **argv) {
  long count = 20;
  int cold = 0;
  const char *path = NULL;

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
      char *end;
      count = strtol(argv[++i], &end, 10);
      if (*end || count < 1 || count > MAX_COUNT) {
        fprintf(stderr, "open-time: -n: '%s' is not a count from 1 to %d\n", argv[i],
                MAX_COUNT);
        return 2;
      }
    } else if (strcmp(argv[i], "--cold") == 0) {
      cold = 1;
    } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      return usage(stdout, 0);
    } else if (!path && argv[i][0] != '-') {
      path = argv[i];
    } else {
      return usage(stderr, 2);
    }
  }
  if (!path)
    return usage(stderr, 2);

  double *ms = calloc((size_t)count, sizeof *ms);
  double *cpu = calloc((size_t)count, sizeof *cpu);
  if (!ms || !cpu) {
    fprintf(stderr, "open-time: out of memory\n");
    return 1;
  }
  struct vhd_open_opts opts = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK};
  uint64_t size = 0;
  for (long i = 0; i < count; i++) {
    if (cold) {
      int r = drop_cache(path);
      if (r < 0)
        fprintf(stderr, "open-time: %s: dropping cached pages: %s\n", path, strerror(-r));
    }
    struct vhd_err err = {.msg = ""};
    vhd_t *vhd = NULL;
    double c0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
    double t0 = clock_ms(CLOCK_MONOTONIC);
    int r = vhd_open(path, &opts, &vhd, &err);
    double t1 = clock_ms(CLOCK_MONOTONIC);
    double c1 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
    if (r < 0) {
      fprintf(stderr, "open-time: %s\n", err.msg[0] ? err.msg : strerror(-r));
      free(ms);
      free(cpu);
      return 1;
    }
    ms[i] = t1 - t0;
    cpu[i] = c1 - c0;
    size = vhd_virtual_size(vhd);
    vhd_close(vhd, NULL);
  }
  qsort(ms, (size_t)count, sizeof *ms, cmp_double);
  qsort(cpu, (size_t)count, sizeof *cpu, cmp_double);
  printf("open_ms min=%.3f median=%.3f max=%.3f cpu_median=%.3f count=%ld cold=%d size=%" PRIu64
         "\n",
         ms[0], ms[count / 2], ms[count - 1], cpu[count / 2], count, cold, size);
  free(ms);
  free(cpu);
  return 0;
}
