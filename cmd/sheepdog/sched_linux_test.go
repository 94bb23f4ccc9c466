package main

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadPolicies returns the scheduling policy of every thread.
func threadPolicies(t *testing.T) map[int]uint32 {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]uint32{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			out[tid] = a.Policy
		}
	}
	return out
}

// TestBatchScheduling: after batchScheduling every thread is SCHED_BATCH,
// and so are threads the runtime starts later.
func TestBatchScheduling(t *testing.T) {
	if err := batchScheduling(); err != nil {
		t.Fatal(err)
	}
	for tid, p := range threadPolicies(t) {
		if p != unix.SCHED_BATCH {
			t.Errorf("thread %d has policy %d, want SCHED_BATCH (%d)", tid, p, unix.SCHED_BATCH)
		}
	}
	// Make the runtime start threads: more goroutines locked to their
	// threads (each holds one) than there are threads.
	before := len(threadPolicies(t))
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < before+4; i++ {
		wg.Go(func() {
			runtime.LockOSThread()
			<-release
			time.Sleep(10 * time.Millisecond)
		})
	}
	time.Sleep(50 * time.Millisecond)
	after := threadPolicies(t)
	close(release)
	wg.Wait()
	if len(after) <= before {
		t.Fatalf("no new threads started (%d before, %d after)", before, len(after))
	}
	for tid, p := range after {
		if p != unix.SCHED_BATCH {
			t.Errorf("new thread %d has policy %d, want SCHED_BATCH", tid, p)
		}
	}
}
