/* fake-workers.h: the harness's side of fake-workers.c, which implements
 * src/server/workers.h without threads. */
#ifndef VHDNBD_FUZZ_FAKE_WORKERS_H
#define VHDNBD_FUZZ_FAKE_WORKERS_H

#include <stddef.h>

#include "workers.h"

/* Items that may run now. */
size_t fake_workers_pending(void);
/* Runs item i (0 is the oldest) and then its done callback. */
void fake_workers_complete(size_t i);

#endif
