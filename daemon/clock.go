package daemon

import (
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// tickClock keeps the node's ticks in step with the machine's clock. Every
// tick that has passed is delivered, and before any event that arrived
// after it, however late the node runs: a run held up by a slow disk, or
// the bursts of a quiet node (core.Node.Quiet), which the loop wakes only
// every core.QuietTicks ticks. A timer that dropped the ticks a busy node
// missed would let its clock fall behind the others', and a read lease
// last longer on it than its grantor allows.
type tickClock struct {
	tick   time.Duration
	start  time.Time     // origin of the offsets; read-only after newTickClock
	ticked time.Duration // (nodeMu) offset of the last tick delivered
}

// maxCatchUp bounds the ticks delivered at once, after the process was
// stopped for a long time (a suspended machine, a debugger): a whole
// burst costs less than a millisecond. It is far above every lease and
// timeout, so that what they bound has run out on the node as it has
// everywhere else.
const maxCatchUp = 5000

func newTickClock(tick time.Duration) tickClock {
	return tickClock{tick: tick, start: time.Now()}
}

// now is the offset of the present; safe from any goroutine.
func (c *tickClock) now() time.Duration { return time.Since(c.start) }

// advance returns how many ticks have passed by offset at, and counts
// them delivered.
func (c *tickClock) advance(at time.Duration) int {
	n := (at - c.ticked) / c.tick
	if n <= 0 {
		return 0
	}
	if n > maxCatchUp {
		c.ticked += (n - maxCatchUp) * c.tick
		n = maxCatchUp
	}
	c.ticked += n * c.tick
	return int(n)
}

// next is the offset at which the loop runs the node again: at the next
// tick, or while the node is quiet at the core.QuietTicks-th.
func (c *tickClock) next(quiet bool) time.Duration {
	k := time.Duration(1)
	if quiet {
		k = core.QuietTicks
	}
	return c.ticked + k*c.tick
}

// catchUp delivers the ticks that have passed by offset at; nodeMu held.
func (d *Daemon) catchUp(at time.Duration) {
	k := d.clock.advance(at)
	if k == 0 {
		return
	}
	unix := time.Now().Unix()
	for range k {
		d.node.Step(core.Tick{Unix: unix})
	}
}
