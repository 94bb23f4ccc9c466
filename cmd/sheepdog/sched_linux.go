package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// batchScheduling puts every thread of the process under SCHED_BATCH;
// threads started later inherit the policy from the thread that starts
// them. Under SCHED_BATCH a woken thread does not preempt the one
// running: it waits for a free CPU, or for the running thread's time
// slice to end. A sheep's threads wake each other all the time (a message
// in, a reply out, a disk completion), and on busy CPUs every such wake-up
// used to interrupt the thread that caused it, typically between the
// writes of one replicated request to its replicas. Measured on the
// 2-vCPU guest of the README (3 sheep and fio sharing it), alternating
// runs of the same build with and without: 4K randwrite QD1 mean latency
// went from 322 to 278 µs (medians of 6); QD32 IOPS did not change beyond
// the noise (11428 and 10994, medians of 3).
func batchScheduling() error {
	for pass := 0; pass < 8; pass++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("listing threads: %w", err)
		}
		changed := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			attr, err := unix.SchedGetAttr(tid, 0)
			if errors.Is(err, unix.ESRCH) {
				continue // the thread exited
			}
			if err != nil {
				return fmt.Errorf("sched_getattr: %w", err)
			}
			if attr.Policy == unix.SCHED_BATCH {
				continue
			}
			attr.Policy, attr.Priority = unix.SCHED_BATCH, 0
			if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("sched_setattr SCHED_BATCH: %w", err)
			}
			changed++
		}
		if changed == 0 {
			return nil // a pass found every thread done, so new ones inherit it
		}
	}
	return nil
}
