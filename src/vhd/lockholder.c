/* lockholder.c: which process holds an OFD lock on an image, for the
 * message that refuses it.  F_OFD_GETLK reports no pid for OFD locks (they
 * belong to an open file description, not a process), but
 * /proc/PID/fdinfo/FD lists the locks of each description: a "lock:" line
 * naming OFDLCK and the file's device and inode.  Only processes whose
 * /proc entries we may read can be found; the search runs only when a lock
 * was refused.  /proc/locks, the kernel's list of every lock, gives how
 * many hold a file (vhd_lock_census), whoever they are. */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "vhd-internal.h"

static bool all_digits(const char *s) {
  if (!*s)
    return false;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s))
      return false;
  return true;
}

/* Whether fdinfo file path lists an OFD lock on the file key names. */
static bool holds_lock(const char *path, const char *key) {
  char buf[4096];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return false;
  buf[n] = '\0';
  for (char *line = buf; line && *line;) {
    char *next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    if (strncmp(line, "lock:", 5) == 0 && strstr(line, "OFDLCK") && strstr(line, key))
      return true;
    line = next;
  }
  return false;
}

static bool process_holds(const char *pid, const char *key) {
  char dir[300];
  snprintf(dir, sizeof dir, "/proc/%s/fdinfo", pid);
  DIR *d = opendir(dir);
  if (!d)
    return false;
  bool found = false;
  struct dirent *de;
  while (!found && (de = readdir(d))) {
    if (!all_digits(de->d_name))
      continue;
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    found = holds_lock(path, key);
  }
  closedir(d);
  return found;
}

int vhd_lock_holder(int fd, char *out, size_t len) {
  struct stat st;
  if (fstat(fd, &st) < 0)
    return 0;
  /* As the kernel prints it in a lock line: " MAJ:MIN:INODE ". */
  char key[64];
  snprintf(key, sizeof key, " %02x:%02x:%llu ", major(st.st_dev), minor(st.st_dev),
           (unsigned long long)st.st_ino);
  DIR *proc = opendir("/proc");
  if (!proc)
    return 0;
  int r = 0;
  struct dirent *de;
  while (!r && (de = readdir(proc))) {
    if (!all_digits(de->d_name) || !process_holds(de->d_name, key))
      continue;
    char path[300], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%s/comm", de->d_name);
    FILE *f = fopen(path, "re");
    if (f) {
      if (fgets(comm, sizeof comm, f))
        comm[strcspn(comm, "\n")] = '\0';
      fclose(f);
    }
    snprintf(out, len, "process %s%s%s%s", de->d_name, comm[0] ? " (" : "", comm,
             comm[0] ? ")" : "");
    r = 1;
  }
  closedir(proc);
  return r;
}

int vhd_lock_census(const struct stat *st, unsigned *readers, unsigned *writers) {
  *readers = *writers = 0;
  FILE *f = fopen("/proc/locks", "re");
  if (!f)
    return -errno;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    /* "ID: CLASS ADVISORY TYPE PID MAJ:MIN:INODE START END", or with
     * "-> " after the id for a waiter, which holds nothing. */
    char class[16], mode[16], type[16];
    unsigned maj, min;
    unsigned long long ino;
    char *p = strchr(line, ':');
    if (!p || strstr(p, "->") == p + 2 ||
        sscanf(p + 1, "%15s %15s %15s %*s %x:%x:%llu", class, mode, type, &maj, &min, &ino) !=
            6)
      continue;
    /* flock(2) locks and leases do not conflict with fcntl(2) locks. */
    if ((strcmp(class, "POSIX") != 0 && strcmp(class, "OFDLCK") != 0) ||
        makedev(maj, min) != st->st_dev || ino != (unsigned long long)st->st_ino)
      continue;
    if (strcmp(type, "WRITE") == 0)
      (*writers)++;
    else if (strcmp(type, "READ") == 0)
      (*readers)++;
  }
  fclose(f);
  return 0;
}
