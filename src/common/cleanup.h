/* Scope-bound cleanup so error paths stay one line. */
#ifndef VHDNBD_CLEANUP_H
#define VHDNBD_CLEANUP_H

#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

static inline void cleanup_free(void *p) { free(*(void **)p); }
static inline void cleanup_close(int *fd) {
  if (*fd >= 0)
    close(*fd);
}
#define CLEANUP_FREE __attribute__((cleanup(cleanup_free)))
#define CLEANUP_CLOSE __attribute__((cleanup(cleanup_close)))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define ROUND_UP(n, a) (DIV_ROUND_UP(n, a) * (a))
#define ROUND_DOWN(n, a) ((n) / (a) * (a))
#define CONTAINER_OF(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

#endif
