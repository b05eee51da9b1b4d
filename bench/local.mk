# Benchmarks: bench/run compares vhdnbd with qemu-nbd and nbdkit (see
# bench/README.md).  Nothing here is built by a plain `make`: bench/run builds
# bench/open-time on demand.
EXTRA_PROGRAMS += bench/open-time
bench_open_time_SOURCES = bench/open-time.c
bench_open_time_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
CLEANFILES += bench/open-time

EXTRA_DIST += \
	bench/README.md \
	bench/RESULTS.md \
	bench/run \
	bench/report.py \
	bench/nbd-idle.py \
	bench/startup-time.py \
	bench/test-bench-smoke.sh

# bench/run --smoke: two short workloads on every image and server, so the
# benchmark keeps working (it measures nothing worth keeping).
TESTS += bench/test-bench-smoke.sh
