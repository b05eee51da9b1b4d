/* Sector bitmaps read from the file on first use, by the I/O paths:
 *
 *   - readahead: when a block's bitmap is loaded right after the block
 *     before it, the kernel is asked (POSIX_FADV_WILLNEED) to read the
 *     bitmaps of the next 8 blocks, skipping unallocated blocks and
 *     bitmaps already in memory, each block once; a load out of sequence
 *     asks for nothing.  The offsets asked for are checked against the
 *     BAT as this test decodes it from the file;
 *   - the image lock is not held while a bitmap is read: with one thread
 *     held inside a bitmap read, writes, reads and an allocation in other
 *     blocks complete (a watchdog fails the test if they wait);
 *   - two threads loading the same bitmap: the one that finishes second
 *     keeps the first one's copy, with the bits set since; its own copy,
 *     read before them, is dropped (else a sector written meanwhile would
 *     read as zeros);
 *   - a block freed while its bitmap is read: the write that was reading
 *     it allocates the block again and lands there.
 * Every case ends with the image read back against a model, after a
 * flush and reopen, and checked. */
#include "config.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define BS (16u * 1024u) /* 32 sectors: a one-sector bitmap */
#define NBLK 24u
#define SIZE ((uint64_t)NBLK * BS)
#define UNALLOCATED 6u /* never written before the cases */

static uint8_t model[SIZE];
static const char *path;
static struct vhd_err err;

static void write_model(vhd_t *v, uint64_t off, size_t len) {
  uint8_t *b = t_xmalloc(len);
  t_fill_nonzero(b, len);
  T_OK(vhd_write(v, b, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, b, len);
  free(b);
}

static void verify(vhd_t *v, const char *when) {
  static uint8_t buf[SIZE];
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read");
  for (uint64_t i = 0; i < SIZE; i++)
    T_ASSERT(buf[i] == model[i], "%s: byte %llu (block %llu) reads %u, the model has %u", when,
             (unsigned long long)i, (unsigned long long)(i / BS), buf[i], model[i]);
}

static vhd_t *reopen(vhd_t *v) {
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  return t_open(path, false);
}

/* The file offset of block blk's bitmap, from the BAT in the file. */
static uint64_t bitmap_offset(uint32_t blk) {
  uint8_t f[512], h[1024], e[4];
  t_pread_file(path, f, sizeof f, 0);
  t_pread_file(path, h, sizeof h, t_be64(f + 16));
  t_pread_file(path, e, sizeof e, t_be64(h + 16) + 4ull * blk);
  return (uint64_t)t_be32(e) * 512;
}

static void read_block(vhd_t *v, uint32_t blk) {
  static uint8_t buf[BS];
  T_OK(vhd_read(v, buf, (uint64_t)blk * BS, BS, &err), &err, "vhd_read");
}

/* The readahead asked for since the last call is exactly blocks[0..n). */
static void expect_readahead(const uint32_t *blocks, size_t n, const char *what) {
  uint64_t got[T_READAHEAD_MAX];
  size_t k = t_readahead_take(got);
  T_ASSERT(k == n, "%s: %zu bitmaps read ahead, expected %zu", what, k, n);
  for (size_t i = 0; i < n; i++)
    T_ASSERT(got[i] == bitmap_offset(blocks[i]),
             "%s: readahead %zu at offset %llu, expected block %u's bitmap at %llu", what, i,
             (unsigned long long)got[i], blocks[i], (unsigned long long)bitmap_offset(blocks[i]));
}

static void readahead_cases(vhd_t *v) {
  uint64_t junk[T_READAHEAD_MAX];
  t_readahead_take(junk);
  read_block(v, 4); /* out of sequence: nothing; 4 is in memory now */
  expect_readahead(NULL, 0, "block 4 alone");
  read_block(v, 0);
  expect_readahead(NULL, 0, "block 0");
  read_block(v, 1); /* after 0: 2..9, without 4 (loaded) and 6 (unallocated) */
  expect_readahead((const uint32_t[]){2, 3, 5, 7, 8, 9}, 6, "block 1 after block 0");
  read_block(v, 2); /* the window moves on by one */
  expect_readahead((const uint32_t[]){10}, 1, "block 2 after block 1");
  read_block(v, 1); /* in memory: no load, nothing asked */
  expect_readahead(NULL, 0, "block 1 again");
  read_block(v, 20);
  expect_readahead(NULL, 0, "block 20 out of sequence");
  /* Writes load bitmaps the same way; the window stops at the last block. */
  write_model(v, 21ull * BS + 512, 1024);
  expect_readahead((const uint32_t[]){22, 23}, 2, "a write into block 21 after block 20");
  verify(v, "after the readahead cases");
}

struct held_io {
  vhd_t *v;
  bool write;
  uint64_t off;
  uint8_t data[512];
};

static void *held_io_run(void *opaque) {
  struct held_io *h = opaque;
  struct vhd_err e = {{0}};
  if (h->write)
    T_OK(vhd_write(h->v, h->data, h->off, sizeof h->data, 0, &e), &e, "the held write");
  else
    T_OK(vhd_read(h->v, h->data, h->off, sizeof h->data, &e), &e, "the held read");
  return NULL;
}

/* Held inside its first bitmap read (the only reads of 512 bytes). */
static void hold_start(struct held_io *h) { t_hold_start(T_OP_READ, 512, held_io_run, h); }

static void on_watchdog(int sig) {
  (void)sig;
  static const char msg[] = "test-vhd-bitmap-load: FAIL: I/O waited 20 s while another thread "
                            "read a bitmap: the image lock is held across the read\n";
  (void)!write(2, msg, sizeof msg - 1);
  _exit(1);
}

static void unlocked_read_case(vhd_t *v) {
  read_block(v, 1);
  struct held_io h = {.v = v, .write = false, .off = 3ull * BS};
  hold_start(&h);
  signal(SIGALRM, on_watchdog);
  alarm(20);
  write_model(v, 1ull * BS + 1024, 2048);     /* bitmap in memory */
  read_block(v, 1);
  write_model(v, (uint64_t)UNALLOCATED * BS, 512); /* an allocation */
  alarm(0);
  t_hold_release();
  T_ASSERT(memcmp(h.data, model + 3ull * BS, sizeof h.data) == 0,
           "the held read of block 3 returned other bytes");
  verify(v, "after I/O beside a bitmap read");
}

/* Block 8 holds sectors 0-3 only. */
static void concurrent_load_case(vhd_t *v) {
  struct held_io h = {.v = v, .write = true, .off = 8ull * BS + 10 * 512};
  t_fill_nonzero(h.data, sizeof h.data);
  hold_start(&h);
  write_model(v, 8ull * BS + 20 * 512, 512); /* loads block 8's bitmap itself */
  t_hold_release();
  memcpy(model + h.off, h.data, sizeof h.data);
  verify(v, "after two threads loaded one bitmap");
}

static void freed_while_read_case(vhd_t *v) {
  struct held_io h = {.v = v, .write = true, .off = 10ull * BS + 2 * 512};
  t_fill_nonzero(h.data, sizeof h.data);
  hold_start(&h);
  T_OK(vhd_write_zeroes(v, 10ull * BS, BS, VHD_MAY_TRIM, &err), &err, "vhd_write_zeroes");
  memset(model + 10ull * BS, 0, BS);
  t_hold_release();
  memcpy(model + h.off, h.data, sizeof h.data);
  verify(v, "after a block was freed while its bitmap was read");
}

int main(void) {
  t_init("test-vhd-bitmap-load");
  path = strdup(t_path("bm.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  for (uint32_t b = 0; b < NBLK; b++)
    if (b != UNALLOCATED && b != 8)
      write_model(v, (uint64_t)b * BS, BS);
  write_model(v, 8ull * BS, 4 * 512);

  v = reopen(v);
  readahead_cases(v);
  v = reopen(v);
  unlocked_read_case(v);
  v = reopen(v);
  concurrent_load_case(v);
  v = reopen(v);
  freed_while_read_case(v);

  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  v = reopen(v);
  verify(v, "after a flush and reopening");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(!(t_check(path) & ~VHD_CHECK_LEAKS), "vhd_check found damage");
  free((void *)path);
  printf("PASS\n");
  return 0;
}
