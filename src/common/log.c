#include "config.h"

#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum log_level max_level = LOG_LEVEL_NOTICE;
static const char *program = "vhdnbd";
static int prefix_mode = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level max) { max_level = max; }
enum log_level log_get_level(void) { return max_level; }
void log_set_program(const char *name) { program = name; }
void log_set_priority_prefix(int mode) { prefix_mode = mode; }

static int use_prefix(void) {
  if (prefix_mode < 0)
    prefix_mode = getenv("JOURNAL_STREAM") != NULL;
  return prefix_mode;
}

void log_msg(enum log_level level, const char *fmt, ...) {
  if (level > max_level)
    return;
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* One fprintf per line, under a lock, so worker-thread messages never interleave. */
  pthread_mutex_lock(&log_lock);
  if (use_prefix())
    fprintf(stderr, "<%d>%s\n", (int)level, line);
  else
    fprintf(stderr, "%s: %s%s\n", program,
            level <= LOG_LEVEL_ERR ? "error: " : level == LOG_LEVEL_WARNING ? "warning: " : "",
            line);
  pthread_mutex_unlock(&log_lock);
}
