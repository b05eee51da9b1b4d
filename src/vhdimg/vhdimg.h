/* vhdimg.h: what the subcommands of vhdimg share.
 *
 * Exit codes (documented in usage): 0 success, 1 the operation failed,
 * 2 bad arguments; `check` adds its own (see check.c). */
#ifndef VHDNBD_VHDIMG_H
#define VHDNBD_VHDIMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vhd.h"

#define VHDIMG_EXIT_OK 0
#define VHDIMG_EXIT_FAILURE 1
#define VHDIMG_EXIT_USAGE 2

struct vhdimg_cmd {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
  void (*usage)(FILE *f);
};

int cmd_create(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_compact(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
void usage_create(FILE *f);
void usage_info(FILE *f);
void usage_check(FILE *f);
void usage_map(FILE *f);
void usage_convert(FILE *f);
void usage_compare(FILE *f);
void usage_resize(FILE *f);
void usage_compact(FILE *f);
void usage_commit(FILE *f);
void usage_rebase(FILE *f);

/* util.c */
/* Prints "vhdimg CMD: <msg>" and a hint to run --help; returns VHDIMG_EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "vhdimg: <msg>" on stderr. */
void print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reports getopt's ':' (missing argument) or '?' (unknown option) as a usage
 * error; run getopt with opterr = 0 and an optstring starting with ':'. */
int option_error(const char *cmd, int c, char **argv);
/* "\r    ( 42.00/100%)" on stderr, a newline once done reaches total. */
void progress_bar(uint64_t done, uint64_t total);
/* progress_bar as the engine's progress callback (the opaque is unused). */
void progress_cb(void *opaque, uint64_t done, uint64_t total);
/* Under 4 KiB a block's bitmap is less than a sector: other readers fail.
 * Warns on stderr, naming them, when block_size is below that. */
#define VHDIMG_READERS_MIN_BLOCK 4096u
void warn_small_blocks(const char *file, uint32_t block_size);
/* Prints the engine's message (or strerror(-r) when it left none). */
void print_vhd_error(int r, const struct vhd_err *err);
/* Parses a size argument for option `what`; prints a usage error on failure. */
int parse_size_arg(const char *cmd, const char *what, const char *s, uint64_t *out);
/* Writes s as a JSON string literal (quotes included). */
void json_put_string(FILE *f, const char *s);
/* "2026-11-25 12:00:00 UTC" from a VHD timestamp (seconds since 2000-01-01 UTC). */
const char *vhd_time_format(uint32_t ts, char *buf, size_t len);
/* Canonical lower-case UUID text; buf must hold 37 bytes. */
const char *uuid_format(const uint8_t uuid[16], char *buf);
/* A 4-byte creator or OS code as printable text ("tap\0" shows as "tap\0"). */
const char *fourcc_format(const char code[4], char *buf, size_t len);
const char *vhd_type_name(enum vhd_type t);

/* Open warnings collected so `info --json` can list them and others print them. */
struct warn_list {
  char **msgs;
  size_t n;
  bool print;        /* also print each as "vhdimg: warning: ..." on stderr */
};
void warn_collect(void *opaque, const char *msg);
void warn_list_free(struct warn_list *w);

/* source.c: an image convert and compare read, VHD or raw. */
enum source_format { SOURCE_AUTO, SOURCE_VHD, SOURCE_RAW };
struct source {
  const char *path;
  enum source_format fmt; /* SOURCE_VHD or SOURCE_RAW once open */
  vhd_t *vhd;             /* VHD */
  int fd;                 /* raw */
  uint64_t file_size;     /* raw: bytes in the file */
  uint64_t size;          /* the virtual disk (raw: file_size rounded up to 512) */
};
/* "vhd" (or "vpc") and "raw"; -1 for anything else. */
int parse_source_format(const char *s, enum source_format *fmt);
/* Opens path read-only.  SOURCE_AUTO takes a file with a VHD footer as a VHD
 * and refuses any other, saying "PATH is not a VHD image (why); RAW_HINT". */
int source_open(struct source *s, const char *path, enum source_format fmt,
                const char *raw_hint, struct vhd_err *err);
void source_close(struct source *s);
/* Reads [off, off+len) of the virtual disk, which it must lie in. */
int source_read(struct source *s, void *buf, uint64_t off, size_t len, struct vhd_err *err);

/* Ranges of the virtual disk that may hold data, in order; the rest reads as
 * zeros. */
struct data_run {
  uint64_t off, len;
};
struct run_list {
  struct data_run *runs;
  size_t n, cap;
  uint64_t total; /* bytes in runs */
};
int source_data_runs(struct source *s, struct run_list *l, struct vhd_err *err);
bool buf_is_zero(const uint8_t *p, size_t len);

#endif
