package sim

import (
	"github.com/sheepdog-go/sheepdog/core"
)

// netState is the simulated network: per-message latency, and while the
// corresponding faults are active, loss, duplication, long delays and
// blocked links.
type netState struct {
	loss    float64
	dup     float64
	delay   float64 // probability of a long delay (reordering)
	maxLong int64   // longest such delay, µs
	blocked map[[2]int]bool
}

func (s *Sim) linkBlocked(from, to *node) bool {
	return s.net.blocked[[2]int{from.idx, to.idx}]
}

// send puts a message on the wire.
func (s *Sim) send(from *node, m *core.Message) {
	if s.cfg.TraceOID != 0 && m.OID == s.cfg.TraceOID {
		s.tracef("send %v op=%v off=%d len=%d v=%x prev=%x req=%x flags=%b data0=%x", m, m.Op, m.Off, m.Len, m.Version, m.Prev, m.ReqID, m.Flags, first8(m.Data))
	}
	// A message for a node id goes only to that node, as the transport's
	// handshake ensures: not to whoever took over its address.
	var to *node
	if m.To != 0 {
		to = s.byID[m.To]
	} else {
		to = s.byAddr[m.ToAddr]
	}
	s.mix(2, uint64(s.now), uint64(from.idx), uint64(m.Type), uint64(m.To), m.ID)
	if to == nil {
		return
	}
	if s.cfg.Codec {
		b, err := m.Marshal()
		if err != nil {
			s.problem("marshal %v: %v", m, err)
			return
		}
		m2, err := core.UnmarshalMessage(b)
		if err != nil {
			s.problem("unmarshal %v: %v", m, err)
			return
		}
		m = m2
	}
	if from.crashAfterAck && m.Type == core.MsgIOResp && m.Code == core.OK && m.Op != core.OpRead {
		// Crash the node just after it acknowledges a write: everything a
		// correct node acknowledged must already be on every replica.
		from.crashAfterAck = false
		s.at(0, func() {
			if from.up {
				s.tracef("node %d crashes right after acknowledging a write", from.info.ID)
				s.crashAndRestart(from)
			}
		})
	}
	if to == from {
		s.push(&event{at: s.now + 1, kind: evDeliver, node: to, gen: to.gen, from: from, fgen: from.gen, msg: m})
		return
	}
	if s.linkBlocked(from, to) || (s.net.loss > 0 && s.rng.Float64() < s.net.loss) {
		return
	}
	lat := int64(50 + s.rng.IntN(350))
	if s.net.delay > 0 && s.rng.Float64() < s.net.delay {
		lat += s.rng.Int64N(s.net.maxLong)
	}
	s.push(&event{at: s.now + lat, kind: evDeliver, node: to, gen: to.gen, from: from, fgen: from.gen, msg: m})
	if s.net.dup > 0 && s.rng.Float64() < s.net.dup {
		s.push(&event{at: s.now + lat + int64(s.rng.IntN(5000)), kind: evDeliver, node: to, gen: to.gen, from: from, fgen: from.gen, msg: m})
	}
}

func (s *Sim) deliver(e *event) {
	to := e.node
	if !to.up || to.gen != e.gen {
		return // the connection died with the node
	}
	if e.from != nil && e.from.gen != e.fgen && e.from != to && s.rng.IntN(2) == 0 {
		return // the sender crashed with the message still in its buffers
	}
	m := e.msg // the core never modifies a message it receives or sent
	if from := s.byID[m.From]; from != nil && from != to && s.linkBlocked(from, to) {
		return
	}
	s.mix(8, uint64(s.now), uint64(to.idx), uint64(m.Type), uint64(m.From), m.ID)
	s.catchUp(to)
	to.n.Step(m)
	s.flush(to)
	s.busied(to)
}
