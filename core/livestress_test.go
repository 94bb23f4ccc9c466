package core_test

import (
	"math/rand/v2"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
)

// TestLiveSnapshotUnderLoad: an attacher with many writes in flight, as
// fio keeps them (random 512-byte writes at depth 16, each new one sent
// as one finishes, addressed to the VDI id the volume knows), while
// snapshots are taken through other nodes, one right after another. No
// write may fail: those that race a snapshot are redone on the new
// working VDI. (Seeds 6 and 99 found replicas and primaries that had not
// applied the VDI's creation yet refusing its first writes for good,
// with ErrNoVDI and ErrInvalid, where the gateway must retry.)
func TestLiveSnapshotUnderLoad(t *testing.T) {
	seeds := []uint64{99}
	for s := uint64(1); s <= 30; s++ {
		seeds = append(seeds, s)
	}
	for _, seed := range seeds {
		cfg := sim.DefaultConfig()
		cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift, cfg.Seed = 3, 0, 3, 12, seed
		h, err := sim.NewHarness(cfg)
		if err != nil {
			t.Fatal(err)
		}
		const size = 64 << 12 // 64 objects of 4 KiB
		if rep, ok := h.Request(0, &core.Request{Type: core.ReqCreateVDI, Name: "vm", Size: size}); !ok || rep.Code != core.OK {
			t.Fatalf("create: %v %v", rep.Code, ok)
		}
		vid := h.Cluster().LookupVDI("vm").ID
		if rep, ok := h.Request(0, &core.Request{Type: core.ReqAttach, VID: vid}); !ok || rep.Code != core.OK {
			t.Fatalf("attach: %v", rep.Code)
		}
		rng := rand.New(rand.NewPCG(seed, 7))
		failed, done, sent := 0, 0, 0
		var send func()
		send = func() {
			sent++
			r := &core.Request{Type: core.ReqWrite, VID: vid, Off: uint64(rng.IntN(size/512)) * 512, Len: 512, Data: make([]byte, 512)}
			at := vid
			h.Submit(0, r, func(rep core.Reply) {
				done++
				if rep.Code != core.OK {
					failed++
					if failed < 5 {
						t.Errorf("seed %d: write to %06x at %d: %v", seed, at, r.Off, rep.Code)
					}
				} else if rep.VID != 0 && at == vid {
					vid = rep.VID
				}
				if sent < 3000 {
					send()
				}
			})
		}
		for range 16 {
			send()
		}
		for i := range 8 {
			h.Run(int64(2000 + rng.IntN(3000)))
			snap := &core.Request{Type: core.ReqSnapshot, Name: "vm", Tag: string(rune('a' + i))}
			h.Submit(1+i%2, snap, func(rep core.Reply) {
				if rep.Code != core.OK {
					t.Logf("seed %d: snapshot %d: %v", seed, i, rep.Code)
				}
			})
		}
		h.RunUntil(func() bool { return done == sent }, 600_000_000)
		if failed > 0 {
			t.Fatalf("seed %d: %d of %d writes failed", seed, failed, sent)
		}
	}
}

// TestLiveSnapshotAttacherBehind: the attacher learns of a snapshot after
// the primaries of its objects did (it is cut off from the leader for a
// moment), so primaries refuse its writes to the old VDI before it knows
// why. No write may fail: the gateway waits until it has applied the
// snapshot and redoes them on the new working VDI.
func TestLiveSnapshotAttacherBehind(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		cfg := sim.DefaultConfig()
		cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift, cfg.Seed = 4, 0, 2, 12, seed
		h, err := sim.NewHarness(cfg)
		if err != nil {
			t.Fatal(err)
		}
		const size = 64 << 12
		if rep, ok := h.Request(0, &core.Request{Type: core.ReqCreateVDI, Name: "vm", Size: size}); !ok || rep.Code != core.OK {
			t.Fatalf("create: %v %v", rep.Code, ok)
		}
		leader := -1
		for i := range h.Nodes() {
			if h.Node(i).IsLeader() {
				leader = i
			}
		}
		att := (leader + 1) % h.Nodes()
		vid := h.Cluster().LookupVDI("vm").ID
		if rep, ok := h.Request(att, &core.Request{Type: core.ReqAttach, VID: vid}); !ok || rep.Code != core.OK {
			t.Fatalf("attach: %v", rep.Code)
		}
		rng := rand.New(rand.NewPCG(seed, 9))
		failed, done, sent := 0, 0, 0
		var send func()
		send = func() {
			sent++
			r := &core.Request{Type: core.ReqWrite, VID: vid, Off: uint64(rng.IntN(size/512)) * 512, Len: 512, Data: make([]byte, 512)}
			at := vid
			h.Submit(att, r, func(rep core.Reply) {
				done++
				if rep.Code != core.OK {
					failed++
					if failed < 5 {
						t.Errorf("seed %d: write to %06x at %d: %v", seed, at, r.Off, rep.Code)
					}
				} else if rep.VID != 0 && at == vid {
					vid = rep.VID
				}
				if sent < 2000 {
					send()
				}
			})
		}
		for range 16 {
			send()
		}
		for i := range 4 {
			h.Run(int64(2000 + rng.IntN(3000)))
			h.Submit(leader, &core.Request{Type: core.ReqSnapshot, Name: "vm", Tag: string(rune('a' + i))}, func(core.Reply) {})
			h.Cut(att, leader)
			h.Run(int64(5000 + rng.IntN(20000)))
			h.Heal()
		}
		h.RunUntil(func() bool { return done == sent }, 600_000_000)
		if failed > 0 {
			t.Fatalf("seed %d: %d of %d writes failed", seed, failed, sent)
		}
	}
}
