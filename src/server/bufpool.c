#include "config.h"

#include "bufpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* Classes 64 KiB << i; requests above the largest class are not pooled. */
#define N_CLASSES 11 /* 64 KiB .. 64 MiB */

struct free_buf {
  struct free_buf *next;
};

/* Every event loop takes and gives back (loops.h). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct free_buf *free_lists[N_CLASSES];
static size_t cached_bytes;

/* Class of a pooled size, or -1 for sizes malloc handles alone. */
static int class_of(size_t len) {
  if (len < BUFPOOL_MIN_POOLED)
    return -1;
  size_t size = BUFPOOL_MIN_POOLED;
  for (int c = 0; c < N_CLASSES; c++, size <<= 1)
    if (len <= size)
      return c;
  return -1;
}

static size_t class_size(int c) { return (size_t)BUFPOOL_MIN_POOLED << c; }

void *bufpool_get(size_t len) {
  int c = class_of(len);
  if (c < 0)
    return malloc(len);
  pthread_mutex_lock(&lock);
  struct free_buf *b = free_lists[c];
  if (b) {
    free_lists[c] = b->next;
    cached_bytes -= class_size(c);
  }
  pthread_mutex_unlock(&lock);
  return b ? (void *)b : malloc(class_size(c));
}

void bufpool_put(void *buf, size_t len) {
  if (!buf)
    return;
  int c = class_of(len);
  if (c < 0) {
    free(buf);
    return;
  }
  pthread_mutex_lock(&lock);
  bool keep = cached_bytes + class_size(c) <= BUFPOOL_MAX_CACHED;
  if (keep) {
    struct free_buf *b = buf;
    b->next = free_lists[c];
    free_lists[c] = b;
    cached_bytes += class_size(c);
  }
  pthread_mutex_unlock(&lock);
  if (!keep)
    free(buf);
}

void bufpool_drain(void) {
  pthread_mutex_lock(&lock);
  for (int c = 0; c < N_CLASSES; c++) {
    while (free_lists[c]) {
      struct free_buf *b = free_lists[c];
      free_lists[c] = b->next;
      free(b);
    }
  }
  cached_bytes = 0;
  pthread_mutex_unlock(&lock);
}

size_t bufpool_cached_bytes(void) {
  pthread_mutex_lock(&lock);
  size_t n = cached_bytes;
  pthread_mutex_unlock(&lock);
  return n;
}
