/* splice.h: READ data moved from the page cache into a client's socket
 * through a pipe (splice(2)), never copied through the server; and WRITE
 * payloads moved from the socket through a pipe into the file.
 *
 * A worker fills a pipe from the image file (page references, not
 * copies); the loop then moves the pipe's contents into the socket as
 * room appears (conn_write_splice).  Pipes come from a small pool shared
 * by all connections, made as large as one READ slice where the system
 * allows; a READ that finds none free is copied as before. */
#ifndef VHDNBD_SPLICE_H
#define VHDNBD_SPLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Pipes in the pool at most (two descriptors each). */
#define SPLICE_PIPES_MAX 64u

struct splice_pipe {
  int rd, wr; /* -1: none */
};

/* Whether the system can splice at all (a pipe can be made and sized);
 * decided once, at start. */
bool splice_available(void);
/* Any thread: a pipe from the pool, or false when none is free. */
bool splice_pipe_get(struct splice_pipe *p);
/* Any thread: back to the pool; a pipe that may still hold bytes (empty
 * false) is closed instead.  p is then none. */
void splice_pipe_put(struct splice_pipe *p, bool empty);
/* The largest WRITE payload a pool pipe holds, if the socket hands it
 * over in whole pages (conn_expect_pipe copies what does not fit). */
size_t splice_pipe_payload_max(void);
/* Whether len bytes of a file at off can go through a pool pipe, which
 * holds a number of pages (the range may start inside one).  Where they
 * do not fit, the bytes up to the first page boundary may be sent ahead
 * as a copy if there are at most max_head of them and the rest fits:
 * *head is their count (0 when everything fits). */
bool splice_plan(uint64_t off, size_t len, size_t max_head, size_t *head);
/* Reads len bytes of fd into buf: at off, or (off < 0) from where fd is,
 * as from a pipe.  Returns 0, or a negative errno (-ENODATA: fewer bytes
 * there).  For the bytes a spliced reply sends as a copy: the head before
 * the first page boundary (worker), and what a full socket did not take
 * (loop: the pipe is non-blocking, and holds them). */
int splice_read_full(int fd, void *buf, size_t len, int64_t off);
/* Worker thread: moves [off, off+len) of fd into the empty pipe p.
 * Returns 0, or a negative errno (the pipe may then hold part of it). */
int splice_fill(struct splice_pipe *p, int fd, uint64_t off, size_t len);

#endif
