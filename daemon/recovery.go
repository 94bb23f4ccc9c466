package daemon

import (
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// rateWindow is how far back the recovery rate looks: long enough to
// smooth the steps of whole-object copies, short enough that a change
// of pace (clients arriving, --recovery-rate) shows within seconds.
const rateWindow = 10 * time.Second

// rateSample is the bytes copied by some time.
type rateSample struct {
	at    time.Time
	bytes uint64
}

// rateMeter turns the count of copied bytes into a rate over the last
// rateWindow, from samples taken at least every sampleEvery.
type rateMeter struct {
	mu      sync.Mutex
	samples []rateSample // oldest first, spanning at most rateWindow
}

const sampleEvery = 250 * time.Millisecond

// observe records that bytes had been copied by now.
func (m *rateMeter) observe(now time.Time, bytes uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.samples); n > 0 && now.Sub(m.samples[n-1].at) < sampleEvery {
		return
	}
	m.samples = append(m.samples, rateSample{now, bytes})
	i := 0
	for i < len(m.samples)-2 && now.Sub(m.samples[i+1].at) >= rateWindow {
		i++
	}
	m.samples = append(m.samples[:0], m.samples[i:]...)
}

// rate is the bytes per second copied between the oldest sample in the
// window and now.
func (m *rateMeter) rate(now time.Time, bytes uint64) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.samples {
		if now.Sub(s.at) > rateWindow || bytes < s.bytes {
			continue
		}
		if dt := now.Sub(s.at).Seconds(); dt >= 0.5 {
			return float64(bytes-s.bytes) / dt
		}
		break
	}
	return 0
}

// RecoveryProgress is a node's recovery progress, rate and pacing, for
// `node recovery`.
type RecoveryProgress struct {
	BytesTotal     uint64  `json:"recovery_bytes_total"`     // bytes of the objects this epoch's recovery fetches (at full object size)
	BytesRemaining uint64  `json:"recovery_bytes_remaining"` // of those, still to fetch
	Copied         uint64  `json:"recovery_copied_bytes"`    // bytes copied from peers since the node started
	Rate           float64 `json:"recovery_rate"`            // bytes/s copied over the last rateWindow
	ETA            float64 `json:"recovery_eta_seconds"`     // BytesRemaining at Rate (0: unknown or done)
	Cap            float64 `json:"recovery_rate_cap"`        // bytes/s the pacing applies now (0: unlimited)
	Yielding       bool    `json:"recovery_yielding"`        // clients are busy: Cap is the busy rate
}

// recoveryProgress reads the node's progress; called holding the node.
func (d *Daemon) recoveryProgress(n *core.Node, r core.RecoveryStatus) RecoveryProgress {
	now := time.Now()
	var p RecoveryProgress
	if r.Total > 0 {
		p.BytesTotal, p.BytesRemaining = n.RecoveryBytes()
	}
	p.Copied = d.copied.Load()
	d.rates.observe(now, p.Copied)
	p.Rate = d.rates.rate(now, p.Copied)
	if !r.Finished && p.Rate > 0 {
		p.ETA = float64(p.BytesRemaining) / p.Rate
	}
	p.Cap, p.Yielding = d.pacer.current(now)
	return p
}
