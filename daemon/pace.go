package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// Recovery pacing. The data recovery moves into a node arrives as whole
// objects pulled from peers, each written with one DiskPut. The daemon
// pays for each such copy with tokens of a bucket before the copy reaches
// its disk worker. Catch-ups and repairs copy the same way but lie on a
// client's path, so only copies the core's recovery is fetching are
// paced (core.Node.RecoveryFetch); one that client I/O waits for passes
// at once, in debt, and the copies behind it pay for it. The core pulls a bounded number of objects at
// once (core.Timing.RecoveryParallel) and fetches the next one only when
// a copy completes, so pacing the writes paces the peer transfers too,
// and nothing in the core waits on a timer that the pacing could run out.
//
// Two rates apply:
//   - Config.RecoveryRate caps it at all times (0: unlimited);
//   - while clients are busy on the node, Config.RecoveryBusyRate caps it
//     (DefaultRecoveryBusyRate unless set; negative: never yield).
//
// "Clients are busy" means a client request of this node's front ends is
// in flight, or an object operation, replicated write or flush from a
// gateway (MsgIO, MsgRepl, MsgSync) arrived within the last clientWindow.
// Recovery thus runs at disk speed on an idle cluster and steps aside
// within a window of a client's first request.

// DefaultRecoveryBusyRate is the recovery rate while clients are busy.
// On the 2-vCPU guest of the README, refilling a wiped node of 3, 4K
// random writes at QD1 fell from 584 IOPS to 97 under unpaced recovery
// (158 MiB/s) and kept 870 at this rate (medians of 3; the machine was
// shared, hence a baseline below the figure under recovery).
const DefaultRecoveryBusyRate = 16 << 20

// clientWindow is how long after a client's request the node still counts
// its clients as busy: long enough to span the gaps between the requests
// of a client at queue depth 1, short enough to return to full speed soon
// after they stop.
const clientWindow = 200 * time.Millisecond

// paceStep bounds one sleep of a copy waiting for tokens, so that a rate
// change (clients going idle) takes effect within it.
const paceStep = 20 * time.Millisecond

// pacer is the token bucket of recovery copies.
type pacer struct {
	rate     float64 // bytes/s at all times; 0: unlimited
	busyRate float64 // bytes/s while clients are busy; 0: no yielding

	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	clients func() bool // a client request is in flight at this node's front ends

	mu     sync.Mutex
	tokens float64 // may go negative: the debt of the last copy let through
	last   time.Time

	lastClient atomic.Int64  // unix nanoseconds of the last client request from a gateway
	granted    atomic.Uint64 // bytes of copies let through
	waited     atomic.Int64  // nanoseconds copies spent waiting for tokens
	yielding   atomic.Bool   // the last decision was at the busy rate
}

func newPacer(rate, busyRate int64, clients func() bool) *pacer {
	p := &pacer{now: time.Now, sleep: sleepCtx, clients: clients}
	if rate > 0 {
		p.rate = float64(rate)
	}
	switch {
	case busyRate == 0:
		p.busyRate = DefaultRecoveryBusyRate
	case busyRate > 0:
		p.busyRate = float64(busyRate)
	}
	return p
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("recovery pacing: %w", ctx.Err())
	}
}

// clientSeen records a client request arriving from a gateway.
func (p *pacer) clientSeen() { p.lastClient.Store(p.now().UnixNano()) }

// busy reports whether clients are busy on the node at now.
func (p *pacer) busy(now time.Time) bool {
	return p.clients() || now.UnixNano()-p.lastClient.Load() < int64(clientWindow)
}

// current is the rate that applies at now (0: unlimited) and whether it
// is the busy rate.
func (p *pacer) current(now time.Time) (float64, bool) {
	r := p.rate
	if p.busyRate > 0 && (r == 0 || p.busyRate < r) && p.busy(now) {
		return p.busyRate, true
	}
	return r, false
}

// limited reports whether a copy would wait at all now: if not, it need
// not go through the pacing goroutine.
func (p *pacer) limited() bool {
	r, _ := p.current(p.now())
	return r > 0
}

// burst is the credit an idle bucket gathers: a twentieth of a second.
func burst(rate float64) float64 { return rate / 20 }

// wait blocks until n bytes may be copied, or ctx ends. A copy is let
// through as soon as the bucket holds no debt, taking the bucket into
// debt by its size, so that copies larger than the burst pass too: over
// any interval T the bytes let through are at most rate·T plus the burst
// plus one copy.
func (p *pacer) wait(ctx context.Context, n int) error {
	start := p.now()
	defer func() { p.waited.Add(int64(p.now().Sub(start))) }()
	for {
		p.mu.Lock()
		now := p.now()
		rate, busy := p.current(now)
		p.yielding.Store(busy)
		if rate == 0 {
			p.tokens, p.last = 0, now
			p.mu.Unlock()
			p.granted.Add(uint64(n))
			return nil
		}
		if !p.last.IsZero() {
			p.tokens = min(p.tokens+rate*now.Sub(p.last).Seconds(), burst(rate))
		}
		p.last = now
		if p.tokens >= 0 {
			p.tokens -= float64(n)
			p.mu.Unlock()
			p.granted.Add(uint64(n))
			return nil
		}
		d := time.Duration(-p.tokens / rate * float64(time.Second))
		p.mu.Unlock()
		if err := p.sleep(ctx, min(max(d, time.Millisecond), paceStep)); err != nil {
			return err
		}
	}
}

// take lets n bytes through at once, in debt if need be.
func (p *pacer) take(n int) {
	p.mu.Lock()
	now := p.now()
	if rate, _ := p.current(now); rate > 0 {
		if !p.last.IsZero() {
			p.tokens = min(p.tokens+rate*now.Sub(p.last).Seconds(), burst(rate))
		}
		p.last = now
		p.tokens -= float64(n)
	}
	p.mu.Unlock()
	p.granted.Add(uint64(n))
}

// isCopy reports whether op writes an object copied from a peer.
func isCopy(op core.DiskOp) bool { return op.Kind == core.DiskPut && len(op.Data) > 0 }

// copyQueue holds the operations on objects whose paced copy has not gone
// to its worker yet, so that an object's operations still reach the disk
// in the order the core issued them. (The core issues nothing else on an
// object while its copy is in flight; this keeps the order should that
// change.)
type copyQueue struct {
	ch     chan core.DiskOp
	mu     sync.Mutex
	held   map[core.OID][]core.DiskOp // (mu) behind a paced copy, in issue order
	nheld  atomic.Int32               // len(held), read without mu on every disk operation
	cancel context.CancelFunc
	done   chan struct{}
}

// startPacing starts the goroutine that lets paced copies through.
func (d *Daemon) startPacing() {
	ctx, cancel := context.WithCancel(context.Background())
	q := &copyQueue{ch: make(chan core.DiskOp, 4096), held: map[core.OID][]core.DiskOp{}, cancel: cancel, done: make(chan struct{})}
	d.copies = q
	go func() {
		defer close(q.done)
		for op := range q.ch {
			if err := d.pacer.wait(ctx, len(op.Data)); err != nil {
				continue // stopping: the node no longer takes completions
			}
			q.mu.Lock()
			// Under mu, so that nothing issued on the object meanwhile
			// overtakes the copy.
			d.toWorker(op)
			for _, o := range q.held[op.OID] {
				d.toWorker(o)
			}
			delete(q.held, op.OID)
			q.nheld.Store(int32(len(q.held)))
			q.mu.Unlock()
		}
	}()
}

// stopPacing ends the pacing goroutine; copies still waiting are dropped
// (the node is stopping and takes no more completions).
func (d *Daemon) stopPacing() {
	q := d.copies
	q.cancel()
	close(q.ch)
	<-q.done
}

// pace routes op through the pacing: a copy that has to wait for tokens
// goes to the pacing goroutine, and an operation on an object whose copy
// is still there waits behind it. It reports whether it took op.
func (d *Daemon) pace(op core.DiskOp) bool {
	q := d.copies
	if q.nheld.Load() > 0 {
		q.mu.Lock()
		if ops, ok := q.held[op.OID]; ok {
			q.held[op.OID] = append(ops, op)
			q.mu.Unlock()
			return true
		}
		q.mu.Unlock()
	}
	if !isCopy(op) {
		return false
	}
	fetching, awaited := d.node.RecoveryFetch(op.OID)
	switch {
	case !fetching:
		return false // a catch-up or a repair: on a client's path
	case awaited:
		// A client waits for this object: it goes first, and the copies
		// behind it pay for it.
		d.pacer.take(len(op.Data))
		return false
	case !d.pacer.limited():
		d.pacer.granted.Add(uint64(len(op.Data)))
		return false
	}
	q.mu.Lock()
	q.held[op.OID] = nil
	q.nheld.Store(int32(len(q.held)))
	q.mu.Unlock()
	q.ch <- op
	return true
}
