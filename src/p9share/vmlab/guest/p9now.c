/* p9now - print CLOCK_MONOTONIC as seconds.microseconds, for timing in the guest.
 *
 * busybox has no `date +%N`, and /proc/uptime ticks in 10 ms: too coarse for phases
 * of 20-50 ms (a virtio-fs read of 32 MiB, a cached find). One fork+exec of this
 * costs a few ms under TCG, the same for every server being compared. */
#include <stdio.h>
#include <time.h>

int main(void)
{
	struct timespec t;

	if (clock_gettime(CLOCK_MONOTONIC, &t) != 0) {
		perror("p9now: clock_gettime");
		return 1;
	}
	printf("%ld.%06ld\n", (long)t.tv_sec, t.tv_nsec / 1000);
	return 0;
}
