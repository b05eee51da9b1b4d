/* One logging entry point for the server and tools.
 * Messages go to stderr; under systemd (JOURNAL_STREAM set, or forced) each
 * line gets a "<N>" syslog priority prefix that journald understands. */
#ifndef VHDNBD_LOG_H
#define VHDNBD_LOG_H

#include <stddef.h>

enum log_level {
  LOG_LEVEL_ERR = 3,
  LOG_LEVEL_WARNING = 4,
  LOG_LEVEL_NOTICE = 5,
  LOG_LEVEL_INFO = 6,
  LOG_LEVEL_DEBUG = 7,
};

/* Messages above this level are dropped (default: NOTICE). */
void log_set_level(enum log_level max);
enum log_level log_get_level(void);
void log_set_program(const char *name);
/* prefix: -1 auto-detect from JOURNAL_STREAM, 0 never, 1 always */
void log_set_priority_prefix(int mode);
/* Each message is written as one line of text: control characters and
 * bytes that are not printable UTF-8 appear as \xHH, since
 * messages quote what clients chose (export names, PSK identities,
 * certificate names) and must not forge log lines or reach a terminal as
 * escape sequences. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* That escaping, of in into out (always NUL-terminated, truncated to fit);
 * returns the length written. */
size_t log_escape(char *out, size_t size, const char *in);

#endif
