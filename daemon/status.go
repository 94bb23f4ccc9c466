package daemon

import "time"

// Status is a snapshot of the node for cheap reads without its lock.
type Status struct {
	Epoch    uint32
	Serving  bool
	Leader   bool
	Members  int
	Finished bool
	AllDone  bool
	// ReadsHere counts the object reads this node served from its own
	// replica as a VDI's attacher (core.Node.ReadsHere).
	ReadsHere uint64
	// DirectOps counts the operations this node ran as the primary of
	// objects handed over to it as their VDI's attacher (core.Node.DirectOps).
	DirectOps uint64
	At        time.Time
}

// Status returns the latest snapshot (nil before the first one).
func (d *Daemon) Status() *Status { return d.status.Load() }

// publishStatus refreshes the status snapshot and gauges, at most every
// 100 ms.
func (d *Daemon) publishStatus() {
	if s := d.status.Load(); s != nil && time.Since(s.At) < 100*time.Millisecond {
		return
	}
	n := d.node
	r := n.Recovery()
	s := &Status{Epoch: n.Epoch(), Serving: n.Serving(), Leader: n.IsLeader(), Members: len(n.Cluster().Nodes),
		Finished: r.Finished, AllDone: r.AllDone, ReadsHere: n.ReadsHere(), DirectOps: n.DirectOps(), At: time.Now()}
	d.status.Store(s)
	d.metrics.epoch.Set(float64(s.Epoch))
	d.metrics.members.Set(float64(s.Members))
	d.metrics.recTotal.Set(float64(r.Total))
	d.metrics.recLeft.Set(float64(r.Remaining))
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	d.metrics.recDone.Set(b2f(r.Finished))
	d.rates.observe(s.At, d.copied.Load())
	d.metrics.leader.Set(b2f(s.Leader))
}
