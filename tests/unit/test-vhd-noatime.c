/* Reads never update an image's access time where the engine answers
 * VHD_READ_NOWAIT reads: a read that stores a new atime can wait for a
 * journal commit, and the server's event loop answers such reads itself.
 *
 * - The owner (or CAP_FOWNER) opens with O_NOATIME: after plain and NOWAIT
 *   reads the file's atime, set older than its mtime so that relatime would
 *   update it, is unchanged, and NOWAIT reads of cached data succeed.
 * - Anyone else cannot use O_NOATIME: unless the mount is noatime, NOWAIT
 *   reads give up with -EAGAIN (the caller reads on a thread instead), while
 *   plain reads work.  Checked as uid 65534 when run as root. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define MiB (1024 * 1024)
#define DATA_LEN (64 * 1024)
static const struct timespec old_atime = {.tv_sec = 978307200}; /* 2001-01-01 */

static void set_old_atime(const char *path) {
  struct timespec ts[2] = {old_atime, {.tv_nsec = UTIME_OMIT}};
  T_ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0, "utimensat %s: %s", path, strerror(errno));
}

static time_t atime_of(const char *path) {
  struct stat st;
  T_ASSERT(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
  return st.st_atim.tv_sec;
}

/* Reads [0, DATA_LEN) twice, plainly then with VHD_READ_NOWAIT; returns what
 * the NOWAIT read returned. */
static int read_twice(vhd_t *vhd, const uint8_t *expect) {
  struct vhd_err err = {0};
  uint8_t *buf = t_xmalloc(DATA_LEN);
  T_OK(vhd_read(vhd, buf, 0, DATA_LEN, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, expect, DATA_LEN) == 0, "plain read returned other data");
  memset(buf, 0, DATA_LEN);
  int r = vhd_read_map(vhd, buf, 0, DATA_LEN, VHD_READ_NOWAIT, NULL, NULL, &err);
  if (r == 0)
    T_ASSERT(memcmp(buf, expect, DATA_LEN) == 0, "NOWAIT read returned other data");
  free(buf);
  return r;
}

int main(void) {
  t_init("test-vhd-noatime");
  const char *p = t_path("disk.vhd");
  char *path = strdup(p);
  t_create(path, VHD_TYPE_DYNAMIC, 8 * MiB, 0, true, NULL);
  uint8_t *data = t_xmalloc(DATA_LEN);
  t_fill_random(data, DATA_LEN);
  struct vhd_err err = {0};
  vhd_t *vhd = t_open(path, false);
  T_OK(vhd_write(vhd, data, 0, DATA_LEN, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(vhd, &err), &err, "vhd_close");

  struct statvfs sv;
  T_ASSERT(statvfs(path, &sv) == 0, "statvfs: %s", strerror(errno));
  bool noatime_mount = sv.f_flag & ST_NOATIME;
  if (noatime_mount)
    printf("PARTIAL: %s is on a noatime mount: the atime checks hold trivially\n", t_dir());

  /* The owner: O_NOATIME. */
  set_old_atime(path);
  vhd = t_open(path, true);
  int r = read_twice(vhd, data);
  T_ASSERT(r == 0, "owner: NOWAIT read of cached data returned %d (%s)", r, t_strerr(r));
  T_OK(vhd_close(vhd, &err), &err, "vhd_close");
  T_ASSERT(atime_of(path) == old_atime.tv_sec,
           "owner: reading the image changed its atime: it was not opened with O_NOATIME");
  printf("owner: atime unchanged after reads, NOWAIT read answered\n");

  /* Someone else, who may not use O_NOATIME. */
  if (geteuid() != 0) {
    printf("PARTIAL: not root, so no other user to open the image as: the EAGAIN path not tested\n");
  } else {
    T_ASSERT(chmod(t_dir(), 0755) == 0 && chmod(path, 0644) == 0, "chmod: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
      if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
        t_fail("setresuid(65534): %s", strerror(errno));
      struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK};
      vhd_t *v = NULL;
      T_OK(vhd_open(path, &oo, &v, &err), &err, "vhd_open as uid 65534");
      int rr = read_twice(v, data);
      if (noatime_mount)
        T_ASSERT(rr == 0, "other user, noatime mount: NOWAIT read returned %d", rr);
      else
        T_ASSERT(rr == -EAGAIN,
                 "other user: NOWAIT read returned %d (%s), expected -EAGAIN: the read may "
                 "update the atime",
                 rr, t_strerr(rr));
      T_OK(vhd_close(v, &err), &err, "vhd_close");
      free(data);
      free(path);
      _exit(0); /* the temp dir is the parent's to remove */
    }
    int status;
    T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
    T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the uid 65534 part failed");
    printf("other user: plain reads work, NOWAIT reads %s\n",
           noatime_mount ? "work (noatime mount)" : "give up with EAGAIN");
  }
  free(data);
  free(path);
  printf("PASS\n");
  return 0;
}
