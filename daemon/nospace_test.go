package daemon

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// TestFullDiskIsAClearErrorAndLosesNothing: when the disk fills up, a
// write fails with ENOSPC (NBD's error for it) and everything written
// before is intact; once space is back, writes work again.
func TestFullDiskIsAClearErrorAndLosesNothing(t *testing.T) {
	var full atomic.Bool
	cfg := Config{Dir: filepath.Join(t.TempDir(), "n"), Listen: freeport.Addr(t), Logger: logger(t),
		Disk: disk.Options{Fault: func(f disk.Fault) error {
			if full.Load() && f == disk.FaultJournalAlloc {
				return syscall.ENOSPC
			}
			return nil
		}}}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := &testCluster{t: t, ds: []*Daemon{d}}
	c.waitFor("the node to serve", func() bool { s := d.Status(); return s != nil && s.Members == 1 })
	if _, err := d.do(ctx, &core.Request{Type: core.ReqFormat, Copies: 1, BlockShift: 22}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.do(ctx, &core.Request{Type: core.ReqCreateVDI, Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	b := &backend{d: d}
	vol, err := b.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	old := bytes.Repeat([]byte{0x42}, 1<<20)
	if err := vol.WriteAt(ctx, old, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	// The journal reserves space in steps: write until it needs more.
	chunk := bytes.Repeat([]byte{0x43}, 1<<20)
	for off := uint64(8 << 20); ; off += 1 << 20 {
		if off >= 60<<20 {
			t.Fatal("no write failed although the disk was full")
		}
		err = vol.WriteAt(ctx, chunk, off, false)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, nbd.ErrNoSpace) {
		t.Fatalf("write on a full disk: %v, want an error wrapping nbd.ErrNoSpace", err)
	}
	got := make([]byte, len(old))
	if err := vol.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("data written before the disk filled up: err %v, intact %v", err, bytes.Equal(got, old))
	}
	full.Store(false)
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{0x44}, 4096), 8<<20, false); err != nil {
		t.Fatalf("write after space came back: %v", err)
	}
}
