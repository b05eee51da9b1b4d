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
void usage_create(FILE *f);
void usage_info(FILE *f);
void usage_check(FILE *f);
void usage_map(FILE *f);
void usage_convert(FILE *f);

/* util.c */
/* Prints "vhdimg CMD: <msg>" and a hint to run --help; returns VHDIMG_EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "vhdimg: <msg>" on stderr. */
void print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reports getopt's ':' (missing argument) or '?' (unknown option) as a usage
 * error; run getopt with opterr = 0 and an optstring starting with ':'. */
int option_error(const char *cmd, int c, char **argv);
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

#endif
