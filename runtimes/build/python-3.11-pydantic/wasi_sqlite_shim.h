/* Force-included when compiling sqlite3.c 3.40.1 for wasm32-wasi (wasi-libc 2022 lacks POSIX locks).
   File locking becomes a no-op: fine for one single-threaded WASI process. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>
#define F_RDLCK 0
#define F_WRLCK 1
#define F_UNLCK 2
#define F_GETLK 5
#define F_SETLK 6
#define F_SETLKW 7
static inline int fchmod(int fd, mode_t m){ (void)fd; (void)m; return 0; }
static inline int fchown(int fd, uid_t u, gid_t g){ (void)fd; (void)u; (void)g; return 0; }
static inline uid_t geteuid(void){ return 0; }
static int sqlite_wasi_fcntl(int fd, int cmd, ...){
  va_list ap; va_start(ap, cmd); void *arg = va_arg(ap, void*); va_end(ap);
  if (cmd == F_GETLK){ ((struct flock*)arg)->l_type = F_UNLCK; return 0; }
  if (cmd == F_SETLK || cmd == F_SETLKW) return 0;
  return fcntl(fd, cmd, (int)(intptr_t)arg);
}
#define fcntl sqlite_wasi_fcntl
