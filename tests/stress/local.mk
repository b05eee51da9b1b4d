# Stress tests: the server killed with SIGKILL mid-workload (crash safety),
# and bounded load with hostile clients.  Python drivers use libnbd's module.
TESTS += \
	tests/stress/test-kill9-crash.sh \
	tests/stress/test-free-reuse-crash.sh \
	tests/stress/test-load.sh
EXTRA_DIST += \
	tests/stress/test-kill9-crash.sh \
	tests/stress/kill9-crash.py \
	tests/stress/test-free-reuse-crash.sh \
	tests/stress/free-reuse-crash.py \
	tests/stress/test-load.sh \
	tests/stress/load.py
TESTS += \
	tests/stress/test-attack.sh \
	tests/stress/test-request-memory.sh \
	tests/stress/test-trickle-budget.sh
EXTRA_DIST += \
	tests/stress/test-attack.sh \
	tests/stress/attack.py \
	tests/stress/test-request-memory.sh \
	tests/stress/test-trickle-budget.sh
