# Benchmarks: bench/run compares vhdnbd with qemu-nbd and nbdkit (see
# bench/README.md).  Nothing here is built by a plain `make`: bench/run builds
# bench/open-time on demand.
EXTRA_PROGRAMS += bench/open-time
bench_open_time_SOURCES = bench/open-time.c
bench_open_time_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
CLEANFILES += bench/open-time

# bench/queue-bench: the serializing queue alone, tens of thousands of
# requests waiting (`make bench/queue-bench`, see bench/RESULTS.md).
EXTRA_PROGRAMS += bench/queue-bench
bench_queue_bench_SOURCES = bench/queue-bench.c src/server/queue.c src/server/queue.h
bench_queue_bench_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src/server
CLEANFILES += bench/queue-bench

EXTRA_DIST += \
	bench/README.md \
	bench/RESULTS.md \
	bench/run \
	bench/loop-stall \
	bench/report.py \
	bench/nbd-idle.py \
	bench/nbd-active.py \
	bench/plot.py \
	bench/plots/qd-iops.svg \
	bench/plots/qd-p99.svg \
	bench/plots/conns-iops.svg \
	bench/plots/seq-mbps.svg \
	bench/startup-time.py \
	bench/test-bench-smoke.sh \
	bench/test-report-verdicts.sh

# bench/run --smoke: two short workloads on every image and server, over a
# Unix socket and TCP, so the benchmark, its report's latency columns and
# target lines, and its plots keep working (it measures nothing worth keeping).
TESTS += bench/test-bench-smoke.sh

# bench/report.py's target lines on made-up rows: what holds, what fails,
# worst first, and the bounds each failing row names.
TESTS += bench/test-report-verdicts.sh

# bench/loop-floor: an NBD server that is one epoll loop doing the I/O and
# nothing else, the yardstick of bench/run's QD1 rows (built by bench/run).
EXTRA_PROGRAMS += bench/loop-floor
bench_loop_floor_SOURCES = bench/loop-floor.c
bench_loop_floor_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
bench_loop_floor_LDADD = $(PTHREAD_LIBS)
CLEANFILES += bench/loop-floor

# bench/engine-bench: the engine alone (reads through a chain, footer moves,
# NOWAIT writes), on demand: make bench/engine-bench.
EXTRA_PROGRAMS += bench/engine-bench
bench_engine_bench_SOURCES = bench/engine-bench.c
bench_engine_bench_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
CLEANFILES += bench/engine-bench
