/* standalone.c: main() for a fuzz target built without libFuzzer: runs
 * LLVMFuzzerTestOneInput once per file named on the command line (a
 * directory stands for every regular file inside it), so corpora and saved
 * crashes are replayed by every build. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz-common.h"

/* Inputs larger than this are not fuzz inputs (libFuzzer's -max_len is far
 * smaller); refusing them keeps a stray argument from eating memory. */
#define REPLAY_MAX_INPUT (16u * 1024 * 1024)

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  uint8_t *buf = malloc(REPLAY_MAX_INPUT);
  if (!buf) {
    fclose(f);
    fprintf(stderr, "%s: out of memory\n", path);
    return -1;
  }
  size_t n = fread(buf, 1, REPLAY_MAX_INPUT, f);
  int bad = ferror(f) || !feof(f);
  fclose(f);
  if (bad) {
    free(buf);
    fprintf(stderr, "%s: unreadable or larger than %u bytes\n", path, REPLAY_MAX_INPUT);
    return -1;
  }
  /* An exact-size copy, so ASan catches reads past the input's end. */
  uint8_t *exact = malloc(n ? n : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_dir(const char *dir, unsigned *count) {
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "%s: %s\n", dir, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      char **nn = realloc(names, cap * sizeof *names);
      if (!nn)
        break;
      names = nn;
    }
    if (asprintf(&names[n], "%s/%s", dir, e->d_name) < 0)
      break;
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_names);
  int r = 0;
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
      if (replay_file(names[i]) < 0)
        r = -1;
      else
        (*count)++;
    }
    free(names[i]);
  }
  free(names);
  return r;
}

int main(int argc, char **argv) {
  unsigned count = 0;
  int r = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) < 0) {
      fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
      r = 1;
    } else if (S_ISDIR(st.st_mode)) {
      if (replay_dir(argv[i], &count) < 0)
        r = 1;
    } else if (replay_file(argv[i]) < 0) {
      r = 1;
    } else {
      count++;
    }
  }
  printf("%s: replayed %u input(s)\n", argv[0], count);
  return r;
}
