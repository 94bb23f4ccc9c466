package disk

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestAppliedWritesReleaseTheirData: once a write is applied, the store
// keeps nothing of a buffer the caller handed over (WriteOwned, what the
// daemon does for every client and peer write). An object's published state lives
// in its last operation, so a buffer left in that operation stayed
// reachable for as long as the object was not written again.
func TestAppliedWritesReleaseTheirData(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{
		{"whole object", 4 << 20},
		{"1 MiB", 1 << 20},
		{"one chunk", ChunkSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openT(t, t.TempDir(), quietOpts())
			defer s.Close()
			const writes = 8
			var released atomic.Int32
			for i := range writes {
				p := make([]byte, tc.size)
				p[0] = byte(i + 1)
				runtime.AddCleanup(&p[0], func(struct{}) { released.Add(1) }, struct{}{})
				if err := s.WriteOwned(uint64(i+1), ObjectMeta{Version: 1}, 0, p, false); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := s.drainApplier(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for released.Load() < writes && time.Now().Before(deadline) {
				runtime.GC()
				time.Sleep(10 * time.Millisecond)
			}
			if n := released.Load(); n != writes {
				t.Fatalf("%d of %d applied write buffers are still reachable", writes-n, writes)
			}
			// The data is on disk, not only gone.
			got := make([]byte, 1)
			if _, err := s.Read(3, 0, got); err != nil || got[0] != 3 {
				t.Fatalf("read back object 3: %v %v", got, err)
			}
		})
	}
}
