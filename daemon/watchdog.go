package daemon

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"
)

// defaultStallAfter is how long one run of the node may take before the
// watchdog reports it: a run handles a batch of events in microseconds to
// milliseconds, and a node whose loop is stuck (a disk call that never
// returns, a library that spins) is otherwise silent while the cluster
// around it loses its quorum.
const defaultStallAfter = 10 * time.Second

// runClock is when the run of the node in progress started (unix
// nanoseconds; 0: none runs).
type runClock struct {
	since      atomic.Int64
	stallAfter time.Duration // 0: defaultStallAfter
}

func (c *runClock) start() { c.since.Store(time.Now().UnixNano()) }
func (c *runClock) stop()  { c.since.Store(0) }

// watchdog logs, once per stalled run, that the node has been stuck in
// one run for longer than its stall bound, with every goroutine's stack: the
// first thing to know about a wedged node.
func (d *Daemon) watchdog(ctx context.Context) {
	after := d.runs.stallAfter
	if after == 0 {
		after = defaultStallAfter
	}
	t := time.NewTicker(after / 4)
	defer t.Stop()
	var reported int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		since := d.runs.since.Load()
		if since == 0 || since == reported || time.Since(time.Unix(0, since)) < after {
			continue
		}
		reported = since
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		d.log.Error("the node's loop is stuck: one run has lasted too long", "for", time.Since(time.Unix(0, since)).Round(time.Millisecond), "stacks", string(buf))
	}
}
