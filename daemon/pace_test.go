package daemon

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
)

// fakePacer is a pacer on a virtual clock that its sleeps advance.
func fakePacer(rate, busyRate int64, clients *bool) (*pacer, *time.Time) {
	now := time.Unix(1000, 0)
	p := newPacer(rate, busyRate, func() bool { return *clients })
	p.now = func() time.Time { return now }
	p.sleep = func(ctx context.Context, d time.Duration) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		now = now.Add(d)
		return nil
	}
	p.lastClient.Store(0)
	return p, &now
}

// TestPacerCountsTokens: copies let through a capped bucket on a virtual
// clock take the bytes over the rate, within one copy and the burst.
func TestPacerCountsTokens(t *testing.T) {
	idle := false
	const rate, obj, n = 8 << 20, 4 << 20, 40 // 160 MiB at 8 MiB/s: 20 s
	p, now := fakePacer(rate, -1, &idle)
	start := *now
	for range n {
		if err := p.wait(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
	took := now.Sub(start).Seconds()
	lo := float64(n*obj-obj-burst(rate)) / rate
	hi := float64(n*obj)/rate + 0.1
	if took < lo || took > hi {
		t.Errorf("%d copies of %d bytes at %d B/s took %.2fs of virtual time, want %.2f-%.2fs", n, obj, rate, took, lo, hi)
	}
	if g := p.granted.Load(); g != n*obj {
		t.Errorf("granted %d bytes, want %d", g, n*obj)
	}
	if w := time.Duration(p.waited.Load()).Seconds(); w < lo {
		t.Errorf("waited %.2fs, want at least %.2fs", w, lo)
	}

	// Unlimited: nothing waits.
	p, now = fakePacer(0, -1, &idle)
	start = *now
	for range n {
		if err := p.wait(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
	if !now.Equal(start) || p.limited() {
		t.Errorf("an unlimited pacer waited %v (limited %v)", now.Sub(start), p.limited())
	}

	// A copy a client waits for passes at once; the next one pays for it.
	p, now = fakePacer(1<<20, -1, &idle)
	p.take(4 << 20)
	start = *now
	if err := p.wait(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if took := now.Sub(start).Seconds(); took < 3.9 || p.granted.Load() != 4<<20+1 {
		t.Errorf("after taking 4 MiB at 1 MiB/s the next copy waited %.2fs (want about 4s), granted %d", took, p.granted.Load())
	}

	// A cancelled wait returns the context's error.
	p, _ = fakePacer(1<<20, -1, &idle)
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.wait(ctx, obj); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := p.wait(ctx, obj); err == nil {
		t.Error("a wait in debt with a cancelled context returned nil")
	}
}

// TestPacerYieldsToClients: unlimited recovery drops to the busy rate
// while a client request is in flight or one arrived within clientWindow,
// and returns to full speed after.
func TestPacerYieldsToClients(t *testing.T) {
	inFlight := false
	const busy, obj = 4 << 20, 4 << 20
	p, now := fakePacer(0, busy, &inFlight)
	if p.limited() {
		t.Fatal("idle: limited")
	}
	p.clientSeen()
	if r, y := p.current(*now); r != busy || !y {
		t.Fatalf("a client request just arrived: rate %v yielding %v, want %v true", r, y, busy)
	}
	start := *now
	inFlight = true // a front-end request in flight throughout
	for range 4 {
		if err := p.wait(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
	if took := now.Sub(start).Seconds(); took < 2.9 {
		t.Errorf("4 copies of 4 MiB at a busy rate of 4 MiB/s took %.2fs, want about 3s", took)
	}
	if !p.yielding.Load() {
		t.Error("not yielding while a client request is in flight")
	}
	inFlight = false
	p.clientSeen()
	*now = now.Add(clientWindow)
	if r, y := p.current(*now); r != 0 || y {
		t.Errorf("clients idle for %v: rate %v yielding %v, want unlimited", clientWindow, r, y)
	}
	inFlight = true
	if r, _ := p.current(*now); r != busy {
		t.Errorf("a front-end request in flight: rate %v, want %v", r, busy)
	}
	// A cap below the busy rate wins.
	p, now = fakePacer(1<<20, busy, &inFlight)
	if r, y := p.current(*now); r != 1<<20 || y {
		t.Errorf("cap 1 MiB/s, busy 4 MiB/s: rate %v yielding %v", r, y)
	}
	if p2 := newPacer(0, 0, func() bool { return true }); p2.busyRate != DefaultRecoveryBusyRate {
		t.Errorf("default busy rate %v", p2.busyRate)
	}
}

// TestRecoveryRateCap: a node joining a 2-node cluster with copies=3
// takes a third copy of every object; with --recovery-rate it copies
// them no faster than the cap, every byte it copied went through the
// bucket, and its progress (objects, bytes, rate, ETA) moves from
// nothing to everything.
func TestRecoveryRateCap(t *testing.T) {
	c := startCluster(t, 2)
	c.waitFor("2 members", func() bool {
		for _, d := range c.ds {
			if s := d.Status(); s == nil || s.Members != 2 {
				return false
			}
		}
		return true
	})
	ctx := context.Background()
	if _, err := c.ds[0].do(ctx, &core.Request{Type: core.ReqFormat, Copies: 3, BlockShift: 20}); err != nil {
		t.Fatal(err)
	}
	c.waitServing()
	_, vol := c.attached(ctx)
	const objs = 12
	buf := make([]byte, 1<<20)
	for i := range objs {
		for j := range buf {
			buf[j] = byte(i + j)
		}
		if err := vol.WriteAt(ctx, buf, uint64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	const rate = 6 << 20
	cfg := Config{Dir: filepath.Join(t.TempDir(), "n2"), Listen: freeport.Addr(t), Logger: logger(t), Join: []string{c.cfgs[0].Listen},
		RecoveryRate: rate, RecoveryBusyRate: -1}
	c.cfgs = append(c.cfgs, cfg)
	c.ds, c.cancel, c.done = append(c.ds, nil), append(c.cancel, nil), append(c.done, nil)
	c.start(2)
	d := c.ds[2]
	c.waitFor("the new node to run", func() bool { return d.Status() != nil }) // Query needs the node
	var listed time.Time
	var mid NodeStatus
	var st NodeStatus
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		st, err = d.nodeStatus(ctx)
		if err == nil && st.Epoch > 0 && st.Total > 0 && !st.Listing {
			if listed.IsZero() {
				listed = time.Now()
			}
			if st.Finished {
				break
			}
			if st.Remaining < st.Total && st.Rate > 0 {
				mid = st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not finish: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(listed)
	copied := d.copied.Load()
	if copied < objs<<20 {
		t.Fatalf("the new node copied %d bytes, want at least the %d written", copied, objs<<20)
	}
	if g := d.pacer.granted.Load(); g != copied {
		t.Errorf("the bucket let through %d bytes, the node copied %d: some copies bypassed it", g, copied)
	}
	// A lower bound only: the bucket may owe one object and its burst.
	if min := time.Duration(float64(copied-(4<<20)-uint64(burst(rate))) / rate * float64(time.Second)); took < min {
		t.Errorf("copied %d bytes in %v under a cap of %d B/s, want at least %v", copied, took, rate, min)
	}
	if st.BytesTotal < objs<<20 || st.BytesRemaining != 0 || st.Remaining != 0 || st.ETA != 0 {
		t.Errorf("finished: %d/%d objects, %d of %d bytes left, ETA %v", st.Total-st.Remaining, st.Total, st.BytesRemaining, st.BytesTotal, st.ETA)
	}
	if mid.Total == 0 {
		t.Fatal("no progress seen while recovering")
	}
	if mid.BytesRemaining == 0 || mid.BytesRemaining >= mid.BytesTotal || mid.ETA <= 0 || mid.Cap != rate || mid.Rate > 2*rate {
		t.Errorf("mid-recovery: %d/%d objects, %d of %d bytes left, %.0f B/s (cap %.0f), ETA %.1fs", mid.Total-mid.Remaining, mid.Total,
			mid.BytesRemaining, mid.BytesTotal, mid.Rate, mid.Cap, mid.ETA)
	}
	t.Logf("copied %d bytes in %v at a cap of %d B/s; mid-recovery %+v", copied, took, rate, mid.RecoveryProgress)
}
