package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
	"github.com/sheepdog-go/sheepdog/nbd"
)

type testCluster struct {
	t      testing.TB
	ds     []*Daemon
	cfgs   []Config
	cancel []context.CancelFunc
	done   []chan error
}

func logger(t testing.TB) *slog.Logger {
	if os.Getenv("SHEEPDOG_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func startCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	dir := t.TempDir()
	var first string
	for i := 0; i < n; i++ {
		cfg := Config{Dir: filepath.Join(dir, fmt.Sprintf("n%d", i)), Listen: freeport.Addr(t), NBD: freeport.Addr(t), Logger: logger(t)}
		if i == 0 {
			first = cfg.Listen
		} else {
			cfg.Join = []string{first}
		}
		c.cfgs = append(c.cfgs, cfg)
		c.ds = append(c.ds, nil)
		c.cancel = append(c.cancel, nil)
		c.done = append(c.done, nil)
		c.start(i)
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *testCluster) start(i int) {
	d, err := New(c.cfgs[i])
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	c.ds[i], c.cancel[i], c.done[i] = d, cancel, done
}

func (c *testCluster) stop(i int) {
	if c.cancel[i] == nil {
		return
	}
	c.cancel[i]()
	if err := <-c.done[i]; err != nil {
		c.t.Errorf("node %d: %v", i, err)
	}
	c.cancel[i] = nil
}

func (c *testCluster) stopAll() {
	for i := range c.ds {
		c.stop(i)
	}
}

// waitServing waits for every node to serve.
func (c *testCluster) waitServing() {
	c.t.Helper()
	c.waitFor("every node to serve", func() bool {
		for _, d := range c.ds {
			if s := d.Status(); s == nil || !s.Serving {
				return false
			}
		}
		return true
	})
}

func (c *testCluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterForms(t *testing.T) {
	c := startCluster(t, 3)
	c.waitFor("3 members everywhere", func() bool {
		for _, d := range c.ds {
			s := d.Status()
			if s == nil || s.Members != 3 {
				return false
			}
		}
		return true
	})
	ctx := context.Background()
	if _, err := c.ds[1].do(ctx, &core.Request{Type: core.ReqFormat, Copies: 3, BlockShift: 22}); err != nil {
		t.Fatal(err)
	}
}

// formattedCluster starts n daemons, formats them with n copies and
// waits until every node serves.
func formattedCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	c := startCluster(t, n)
	c.waitFor(fmt.Sprintf("%d members everywhere", n), func() bool {
		for _, d := range c.ds {
			if s := d.Status(); s == nil || s.Members != n {
				return false
			}
		}
		return true
	})
	if _, err := c.ds[0].do(context.Background(), &core.Request{Type: core.ReqFormat, Copies: uint8(n), BlockShift: 22}); err != nil {
		t.Fatal(err)
	}
	c.waitServing()
	return c
}

// attached creates the 64 MiB VDI "v" through node 0 and attaches it at
// node 1 (the attacher) until the test ends.
func (c *testCluster) attached(ctx context.Context) (core.Reply, nbd.Volume) {
	c.t.Helper()
	created, err := c.ds[0].do(ctx, &core.Request{Type: core.ReqCreateVDI, Name: "v", Size: 64 << 20})
	if err != nil {
		c.t.Fatal(err)
	}
	var vol nbd.Volume
	c.waitFor("the VDI at the attacher", func() bool {
		vol, err = (&backend{d: c.ds[1]}).Open(ctx, "v") // the attacher may not have applied the create yet
		return err == nil
	})
	c.t.Cleanup(func() { vol.Close() })
	return created, vol
}

// soloVolume starts one daemon whose store has the options opt, formats
// it with one copy, creates the 64 MiB VDI "v" and attaches it. The test's
// clean-up detaches it and stops the daemon (after the test's own defers).
func soloVolume(t *testing.T, opt disk.Options) (context.Context, *Daemon, nbd.Volume) {
	t.Helper()
	d, err := New(Config{Dir: filepath.Join(t.TempDir(), "n"), Listen: freeport.Addr(t), Logger: logger(t), Disk: opt})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c := &testCluster{t: t, ds: []*Daemon{d}}
	c.waitFor("the node to serve", func() bool { s := d.Status(); return s != nil && s.Members == 1 })
	if _, err := d.do(ctx, &core.Request{Type: core.ReqFormat, Copies: 1, BlockShift: 22}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.do(ctx, &core.Request{Type: core.ReqCreateVDI, Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	vol, err := (&backend{d: d}).Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vol.Close() })
	return ctx, d, vol
}

// TestClusterDirectWrites: on three nodes with three copies, the attacher
// is handed over the objects it writes whose primary is another node and
// then writes them itself (direct writes); a reader on another node makes
// the primaries take them back, and reads what the attacher wrote; the
// attacher's next writes still land.
func TestClusterDirectWrites(t *testing.T) {
	c := formattedCluster(t, 3)
	ctx := context.Background()
	created, vol := c.attached(ctx)
	const objs, obj = 16, 4 << 20
	want := make([]byte, objs*obj)
	fill := func(round byte) {
		t.Helper()
		for i := 0; i < objs; i++ {
			for k := 0; k < 4; k++ { // the first write asks for the object, the others may go direct
				off := i*obj + k*4096
				p := want[off : off+4096]
				for j := range p {
					p[j] = byte(i) ^ byte(k*7) ^ round
				}
				if err := vol.WriteAt(ctx, p, uint64(off), false); err != nil {
					t.Fatalf("write at %d: %v", off, err)
				}
			}
		}
	}
	check := func(d *Daemon, who string) {
		t.Helper()
		for off := 0; off < len(want); off += obj {
			rep, err := d.do(ctx, &core.Request{Type: core.ReqRead, VID: created.VID, Off: uint64(off), Len: obj})
			if err != nil {
				t.Fatalf("read through %s: %v", who, err)
			}
			if !bytes.Equal(rep.Data, want[off:off+obj]) {
				t.Fatalf("read through %s at %d differs from what the attacher wrote", who, off)
			}
		}
	}
	fill(1)
	c.waitFor("direct writes at the attacher", func() bool { s := c.ds[1].Status(); return s != nil && s.DirectOps > 0 })
	check(c.ds[2], "another node") // takes back what was handed over
	fill(2)
	check(c.ds[0], "a third node")
	check(c.ds[1], "the attacher")
}

// TestRunToCompletion: with one client request at a time, the goroutines
// that receive the requests and the replicas' answers run the node
// themselves, on the attacher and on the replicas; with many in flight
// the loop goroutine runs batches of them. Both ways every write lands.
func TestRunToCompletion(t *testing.T) {
	c := formattedCluster(t, 3)
	ctx := context.Background()
	created, vol := c.attached(ctx)
	runs := func(d *Daemon, by string) float64 { return testutil.ToFloat64(d.metrics.runs.WithLabelValues(by)) }
	var before [3]float64
	for i, d := range c.ds {
		before[i] = runs(d, "caller")
	}
	const writes = 64
	want := make([]byte, 64<<20)
	for i := range writes {
		off := i * (1 << 20)
		p := want[off : off+4096]
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := vol.WriteAt(ctx, p, uint64(off), false); err != nil {
			t.Fatal(err)
		}
	}
	if got := runs(c.ds[1], "caller") - before[1]; got < writes {
		t.Errorf("the attacher's callers ran the node %v times for %d sequential writes, want at least one run each", got, writes)
	}
	for _, i := range []int{0, 2} {
		if got := runs(c.ds[i], "caller") - before[i]; got == 0 {
			t.Errorf("node %d: no run by a caller (the network reader) during sequential writes", i)
		}
	}

	// Many writes in flight at once: batches for the loop goroutine.
	const writers, each, size = 32, 16, 8192
	for g := range writers {
		for k := range each {
			off := (g*each + k) * size
			for j := range size {
				want[off+j] = byte(g ^ k ^ j)
			}
		}
	}
	loopBefore := runs(c.ds[1], "loop")
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Go(func() {
			for k := range each {
				off := (g*each + k) * size
				if err := vol.WriteAt(ctx, want[off:off+size], uint64(off), false); err != nil {
					errs <- fmt.Errorf("write at %d: %w", off, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := runs(c.ds[1], "loop") - loopBefore; got == 0 {
		t.Errorf("no run by the loop goroutine with %d writes in flight", writers)
	}
	for off := 0; off < len(want); off += 4 << 20 {
		rep, err := c.ds[2].do(ctx, &core.Request{Type: core.ReqRead, VID: created.VID, Off: uint64(off), Len: 4 << 20})
		if err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(rep.Data, want[off:off+4<<20]) {
			t.Fatalf("read at %d through another node differs from what was written", off)
		}
	}
}
