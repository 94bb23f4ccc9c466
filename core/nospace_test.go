package core_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
)

// TestFullDiskFailsWritesAndRecovers: one replica's disk is full. Writes
// that need it fail with ErrNoSpace, promptly and every time (a failed
// write left the primary converging that replica for ever, and every
// later operation on the object waited behind it); reads go on; nothing
// acknowledged is lost; once space is back, writes work again and the
// cluster ends whole.
func TestFullDiskFailsWritesAndRecovers(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			cfg := sim.DefaultConfig()
			cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift, cfg.Seed = 3, 0, 3, 12, seed
			if os.Getenv("NOSPACE_TRACE") != "" {
				cfg.Trace = os.Stderr
			}
			h, err := sim.NewHarness(cfg)
			if err != nil {
				t.Fatal(err)
			}
			const objects = 4
			if rep, ok := h.Request(0, &core.Request{Type: core.ReqCreateVDI, Name: "vm", Size: objects << 12}); !ok || rep.Code != core.OK {
				t.Fatalf("create: %v %v", rep.Code, ok)
			}
			vid := h.Cluster().LookupVDI("vm").ID
			if os.Getenv("NOSPACE_TRACE") != "" {
				h.TraceObject(core.DataOID(vid, 0))
			}
			if rep, ok := h.Request(0, &core.Request{Type: core.ReqAttach, VID: vid}); !ok || rep.Code != core.OK {
				t.Fatalf("attach: %v", rep.Code)
			}
			acked := map[int]byte{}
			write := func(obj int, value byte) core.Code {
				t.Helper()
				data := make([]byte, 512)
				data[0] = value
				start := h.Now()
				rep, ok := h.Request(0, &core.Request{Type: core.ReqWrite, VID: vid, Off: uint64(obj) << 12, Len: 512, Data: data})
				if !ok {
					t.Fatalf("write %d to object %d never answered", value, obj)
				}
				if d := h.Now() - start; d > 5_000_000 {
					t.Errorf("write %d to object %d took %d ms", value, obj, d/1000)
				}
				if rep.Code == core.OK {
					acked[obj] = value
				}
				return rep.Code
			}
			read := func(obj int) {
				t.Helper()
				rep, ok := h.Request(0, &core.Request{Type: core.ReqRead, VID: vid, Off: uint64(obj) << 12, Len: 512})
				if !ok || rep.Code != core.OK {
					t.Fatalf("read of object %d: %v (answered %v)", obj, rep.Code, ok)
				}
				if rep.Data[0] != acked[obj] {
					t.Fatalf("object %d reads %#x, acknowledged %#x", obj, rep.Data[0], acked[obj])
				}
			}
			for obj := 0; obj < objects; obj++ {
				if c := write(obj, 1); c != core.OK {
					t.Fatalf("write before the disk filled: %v", c)
				}
			}
			h.DiskFull(2, true)
			failed := 0
			for round := byte(2); round < 6; round++ {
				for obj := 0; obj < objects; obj++ {
					switch c := write(obj, round); c {
					case core.OK:
					case core.ErrNoSpace:
						failed++
					default:
						t.Fatalf("write %d to object %d on a full replica: %v, want ok or no space", round, obj, c)
					}
				}
			}
			if failed == 0 {
				t.Fatal("no write failed although a replica of every object was full")
			}
			// Reads go on while the disk is full. A failed write may or
			// may not have taken effect: an object reads as its last
			// acknowledged write or as one of the failed writes after it.
			for obj := 0; obj < objects; obj++ {
				rep, ok := h.Request(0, &core.Request{Type: core.ReqRead, VID: vid, Off: uint64(obj) << 12, Len: 512})
				if !ok || rep.Code != core.OK {
					t.Fatalf("read of object %d on a full replica: %v (answered %v)", obj, rep.Code, ok)
				}
				if got := rep.Data[0]; got != acked[obj] && (got <= acked[obj] || got >= 6) {
					t.Fatalf("object %d reads %#x: neither its acknowledged %#x nor a later failed write", obj, got, acked[obj])
				}
			}
			// Space comes back: the copies the full replica dropped are
			// taken back without any write or epoch change to prompt it.
			h.DiskFull(2, false)
			if !h.Stabilize() {
				t.Fatal("did not converge")
			}
			if ps := h.Problems(); len(ps) > 0 {
				t.Fatalf("problems once space came back: %v", ps)
			}
			for obj := 0; obj < objects; obj++ {
				if c := write(obj, 9); c != core.OK {
					t.Fatalf("write after space came back: %v", c)
				}
				read(obj)
			}
		})
	}
}
