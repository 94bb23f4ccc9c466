package daemon

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
)

// TestLoopLivesThroughBackpressure: while the store holds writes back
// (its applier is stalled and MaxPending is reached), the writes wait on
// workers and the event loop keeps serving; once the applier moves again
// every write completes and reads back.
func TestLoopLivesThroughBackpressure(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unstall := func() { once.Do(func() { close(release) }) }
	defer unstall()
	ctx, d, vol := soloVolume(t, disk.Options{
		MaxPending:    1 << 20,
		FlushInterval: 5 * time.Millisecond,
		Fault: func(f disk.Fault) error {
			if f == disk.FaultApply {
				<-release // the applier stalls until released
			}
			return nil
		}})
	c := &testCluster{t: t, ds: []*Daemon{d}}

	// Eight 512 KiB writes to eight objects: four times MaxPending.
	const n, size = 8, 512 << 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = vol.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, size), uint64(i)<<22, false)
		}()
	}
	c.waitFor("the store to hold writes back", func() bool { return d.store.WouldWait(size) })
	qctx, qcancel := context.WithTimeout(ctx, 30*time.Second)
	defer qcancel()
	var epoch uint64
	if err := d.Query(qctx, func(nd *core.Node) { epoch = uint64(nd.Epoch()) }); err != nil || epoch == 0 {
		unstall() // the deferred clean-up needs the loop
		t.Fatalf("the loop did not answer while the store held writes back: epoch %d, %v", epoch, err)
	}
	unstall()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for i := range n {
		got := make([]byte, size)
		if err := vol.ReadAt(ctx, got, uint64(i)<<22); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, size)) {
			t.Fatalf("object %d: read %v, intact %v", i, err, err == nil && bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, size)))
		}
	}
}
