/* bufpool.h: request payload buffers, kept for reuse.
 *
 * Large READ and WRITE buffers come and go at a high rate.  Returned to
 * malloc, each one goes back to the kernel (mmap, or a trimmed heap) and its
 * next user pays a page fault per 4 KiB touched, which costs more than the
 * data copy itself.  The pool keeps freed buffers of 64 KiB and more in
 * power-of-two classes, up to BUFPOOL_MAX_CACHED bytes in all; smaller ones
 * go straight to malloc, which already recycles them well.
 *
 * Any thread: every event loop uses it (loops.h), under a lock.
 */
#ifndef VHDNBD_BUFPOOL_H
#define VHDNBD_BUFPOOL_H

#include <stddef.h>

#define BUFPOOL_MIN_POOLED (64u * 1024)
#define BUFPOOL_MAX_CACHED (64u * 1024 * 1024)

/* A buffer of at least len bytes (len > 0), or NULL when out of memory. */
void *bufpool_get(size_t len);
/* Gives back a buffer from bufpool_get(len), with the same len.  NULL is a no-op. */
void bufpool_put(void *buf, size_t len);
/* Frees every cached buffer. */
void bufpool_drain(void);
/* Bytes held in the cache (tests). */
size_t bufpool_cached_bytes(void);

#endif
