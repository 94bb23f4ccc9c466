package sim

import "github.com/sheepdog-go/sheepdog/core"

// The daemon's quiet ticking (Config.Quiet): a node that reports itself
// quiet gets its ticks in bursts, each delivered before the next event it
// handles, and its heartbeats of a burst coalesced. Off, every tick is an
// event of its own, at its time.

// catchUp delivers the ticks of nd that were due by now.
func (s *Sim) catchUp(nd *node) {
	if !s.cfg.Quiet {
		return
	}
	k := 0
	for nd.ticked+nd.period <= s.now {
		nd.ticked += nd.period
		s.mix(1, uint64(nd.ticked), uint64(nd.idx))
		nd.n.Step(core.Tick{Unix: simEpoch + nd.ticked/1_000_000})
		k++
	}
	if k > 1 {
		s.bursts++
	}
}

// scheduleTick sets nd's next tick event: at its next tick, or at the
// core.QuietTicks-th while it is quiet.
func (s *Sim) scheduleTick(nd *node) {
	k := int64(1)
	if nd.n.Quiet() {
		k = core.QuietTicks
	}
	nd.nextTick = nd.ticked + k*nd.period
	s.push(&event{at: nd.nextTick, kind: evTick, node: nd, gen: nd.gen})
}

// busied moves the tick event of a node that stopped being quiet to its
// next tick, as the daemon wakes its loop.
func (s *Sim) busied(nd *node) {
	if s.cfg.Quiet && nd.up && nd.nextTick > nd.ticked+nd.period && !nd.n.Quiet() {
		s.scheduleTick(nd)
	}
}

// lullLoop stops the workload now and then (Config.Quiet): clients, the
// lifecycle and the snapshot reader wait, so that nodes fall quiet while
// faults go on.
func (s *Sim) lullLoop() {
	if s.checking || s.opsStarted >= s.cfg.Ops {
		return
	}
	s.lullUntil = s.now + int64(300+s.rng.IntN(1200))*ms
	s.tracef("lull until %d", s.lullUntil)
	s.at(s.lullUntil-s.now+int64(200+s.rng.IntN(800))*ms, s.lullLoop)
}

// lulled defers fn to the end of the lull, if one is on.
func (s *Sim) lulled(fn func()) bool {
	if !s.cfg.Quiet || s.now >= s.lullUntil {
		return false
	}
	s.at(s.lullUntil-s.now, fn)
	return true
}
